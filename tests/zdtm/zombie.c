/*
 * zombie - a child that exited with status 42 and was not reaped is a zombie at checkpoint
 * time. After restore it must still be a zombie (state Z), and waitpid must reap it with
 * exit status 42.
 */

#include "zombie.h"
