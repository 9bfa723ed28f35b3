/*
 * fifo - a named pipe (mkfifo) from the parent to a child, each end opened by name, holds
 * 10 KiB of unread data at checkpoint time (the child is blocked reading another pipe).
 * After restore the parent adds 2 KiB
 * more and closes its end; the child reads everything up to EOF and reports the byte count
 * and a checksum over a second pipe.
 */

#define FIFO 1
#include "pipe_data.h"
