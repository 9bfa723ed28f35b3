/*
 * posix_shm - a POSIX shared memory object (shm_open, 1 MiB, the fd closed after mmap)
 * mapped MAP_SHARED by the parent and a child. Before the checkpoint each paints a pattern
 * the other checks; after restore the contents must be unchanged, writes must still be seen
 * both ways, and the mapping must still be the object: a fresh shm_open + pread sees what
 * was written through the mapping. The object is unlinked at the end.
 */

#define POSIX_SHM 1
#include "shared_memory.h"
