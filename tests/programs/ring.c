/*
 * ring.c - an MPI job (Open MPI, one node): the ranks pass a token round a ring each step;
 * every rank folds what it received into a running checksum, and each step every rank's
 * checksum reaches rank 0 (MPI_Reduce), which prints it. The token travels through MPI's
 * transports (shared memory or TCP between the ranks, TCP and ptys or pipes between the
 * ranks and mpirun), so a restore that loses, repeats or reorders a message changes every
 * later line.
 *
 * Usage:  mpirun -np <N> ring <steps>
 * Output (rank 0): "pid <mpirun's PID>" (the job's root: the ranks are its children)
 *                  "tick <s> token=<16 hex> sum=<16 hex>"   s = 1..steps
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 40

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long steps = argc > 1 ? strtol(argv[1], NULL, 10) : 100;
    if (rank == 0) {
        printf("pid %d\n", (int)getppid());
        fflush(stdout);
    }
    uint64_t token = 1, own = (uint64_t)rank * 0x9e3779b97f4a7c15ull;
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    for (long s = 1; s <= steps; s++) {
        if (rank == 0) {
            token = token * 6364136223846793005ull + (uint64_t)s;
            MPI_Send(&token, 1, MPI_UINT64_T, next, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_UINT64_T, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_UINT64_T, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token ^= (uint64_t)rank << 17;
            MPI_Send(&token, 1, MPI_UINT64_T, next, 0, MPI_COMM_WORLD);
        }
        own = (own ^ token) * 0x100000001b3ull;
        uint64_t sum = 0;
        MPI_Reduce(&own, &sum, 1, MPI_UINT64_T, MPI_BXOR, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            printf("tick %ld token=%016llx sum=%016llx\n", s, (unsigned long long)token,
                   (unsigned long long)sum);
            fflush(stdout);
        }
        struct timespec ts = {0, TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    MPI_Finalize();
    return 0;
}
