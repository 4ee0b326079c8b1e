/*
 * process.c - small process-level calls Python has no binding for.
 */
#include <stdio.h>

#include "forkhost.h"

FH_API int fh_flush_stdio(void)
{
    return fflush(NULL);
}
