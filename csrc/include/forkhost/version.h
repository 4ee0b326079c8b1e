/* forkhost/version.h - one place for the version, shared by the library,
 * forkhost-run and (by a test) the Python package. */
#ifndef FORKHOST_VERSION_H
#define FORKHOST_VERSION_H
#define FH_VERSION_STRING "0.1.0"
#endif
