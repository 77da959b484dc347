/* Preloaded (/etc/ld.so.preload) into every dynamically linked program the
 * simulated host runs: appends "uid<TAB>argv" (arguments separated by 0x1f)
 * to /var/log/sim/exec.log, so tests can prove no secret ever appears in a
 * process's arguments. Newlines inside arguments become 0x1d, keeping one
 * record per line. Statically linked programs are not seen. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

__attribute__((constructor)) static void log_exec(void) {
    static char line[65536];
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    int prefix = snprintf(line, sizeof line, "%u\t", (unsigned)getuid());
    ssize_t n = read(fd, line + prefix, sizeof line - prefix - 1);
    close(fd);
    if (n <= 0) return;
    for (ssize_t i = prefix; i < prefix + n; i++)
        if (line[i] == '\0') line[i] = '\x1f';
        else if (line[i] == '\n') line[i] = '\x1d';
    line[prefix + n - 1] = '\n';
    int out = open("/var/log/sim/exec.log", O_WRONLY | O_APPEND | O_CLOEXEC);
    if (out < 0) return;
    ssize_t ignored = write(out, line, prefix + n);
    (void)ignored;
    close(out);
}
