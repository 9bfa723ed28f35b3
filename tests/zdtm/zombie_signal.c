/*
 * zombie_signal - a child killed by SIGKILL and not reaped is a zombie at checkpoint time.
 * After restore it must still be a zombie (state Z), and waitpid must report WIFSIGNALED
 * with WTERMSIG 9.
 */

#define KILLED 1
#include "zombie.h"
