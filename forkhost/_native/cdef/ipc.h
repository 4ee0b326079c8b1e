/* cffi view of forkhost/ipc.h: only what the Python side uses.  The
 * primary stores where its IPC socket is before forking the template, and
 * a Python secondary reads it back (it inherited it); the wire format
 * itself is spoken in Python (forkhost/ipc.py).  pid_t is declared as int
 * here: spawn.h's cdef defines pid_t, but after this file, and the
 * compiler converts between the two (pid_t is int on Linux). */
int fh_ipc_set_primary(const char *path, int primary_pid);
const char *fh_ipc_socket_path(void);
int fh_ipc_primary_pid(void);
