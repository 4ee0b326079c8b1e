/*
 * process.c - small process-level calls Python has no binding for.
 */
#include <stdio.h>
#include <sys/prctl.h>

#include "forkhost.h"

FH_API int fh_set_pdeathsig(int sig)
{
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL);
}

FH_API int fh_flush_stdio(void)
{
    return fflush(NULL);
}
