"""The launcher: a warm background process that starts VMs in milliseconds.

A fresh `pocket restore` spends most of its time before the guest runs at
all: importing numba and loading the compiled CPU core (about 0.3 s). The
launcher pays that once. `pocket launcher start` runs a per-user process
that imports everything and loads the core, then waits on a Unix socket
beside the VMs' control sockets. When it is running, `pocket run` and
`pocket restore` hand their command line, environment, working directory
and stdin/stdout/stderr (as file descriptors) to it; it forks, and the
child runs exactly the command the user typed, in a process of its own
(design rule 6: one VM, one process), talking to the user's terminal or
pipes directly. The command that was typed stays in the foreground as a
thin proxy: it forwards signals to the VM and exits with its status.

When the launcher is not running, or cannot serve a request faithfully
(another Python, other numba settings, pocketvm's sources changed since it
started), the command simply runs in its own process as before.
"""
