/*
 * shm_anon_shared - 1 MiB of MAP_SHARED|MAP_ANONYMOUS memory shared by the parent and a
 * child. Before the checkpoint each paints a pattern the other checks; after restore the
 * contents must be unchanged, and writes must still be seen both ways: the child paints a
 * new pattern the parent must see, then the parent one the child must see.
 */

#include "shared_memory.h"
