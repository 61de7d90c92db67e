/*
 * kxen-loops: the operations whose cost a PV guest kernel changes most,
 * timed in a loop, run the same way in the guest and on the host by
 * `kxen-bench pv-stock`.
 *
 *   kxen-loops getpid N   N getpid() system calls
 *   kxen-loops fork N     N fork() + _exit() + waitpid()
 *   kxen-loops exec N     N fork() + execve() of this static binary + waitpid()
 *   kxen-loops fault N    N first-touch page faults on fresh anonymous memory
 *
 * Prints "loop-result NAME ops=N ns_per_op=X", or "loop-failed NAME WHY".
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Pages mapped, touched and unmapped per round of the fault loop. */
#define FAULT_CHUNK_PAGES 256

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static int failed(const char *what, const char *why)
{
	printf("loop-failed %s %s\n", what, why);
	return 1;
}

/* Wait for `child` and say whether it exited with status 0. */
static int reaped_cleanly(pid_t child)
{
	int status;
	return waitpid(child, &status, 0) == child && WIFEXITED(status) &&
	       WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "exit") == 0)
		return 0;
	if (argc != 3) {
		fprintf(stderr, "usage: %s getpid|fork|exec|fault N\n", argv[0]);
		return 2;
	}
	const char *what = argv[1];
	long n = atol(argv[2]);
	if (n <= 0)
		return failed(what, "bad-count");
	long page = sysconf(_SC_PAGESIZE);
	double start = now_ns();
	if (strcmp(what, "getpid") == 0) {
		for (long i = 0; i < n; i++)
			syscall(SYS_getpid);
	} else if (strcmp(what, "fork") == 0) {
		for (long i = 0; i < n; i++) {
			pid_t child = fork();
			if (child == 0)
				_exit(0);
			if (child < 0 || !reaped_cleanly(child))
				return failed(what, "child");
		}
	} else if (strcmp(what, "exec") == 0) {
		for (long i = 0; i < n; i++) {
			pid_t child = fork();
			if (child == 0) {
				execl("/proc/self/exe", argv[0], "exit", (char *)NULL);
				_exit(127);
			}
			if (child < 0 || !reaped_cleanly(child))
				return failed(what, "child");
		}
	} else if (strcmp(what, "fault") == 0) {
		for (long done = 0; done < n; done += FAULT_CHUNK_PAGES) {
			size_t len = (size_t)FAULT_CHUNK_PAGES * page;
			volatile char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
						  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (mem == MAP_FAILED)
				return failed(what, "mmap");
			for (size_t off = 0; off < len; off += page)
				mem[off] = 1;
			munmap((void *)mem, len);
		}
		n = (n + FAULT_CHUNK_PAGES - 1) / FAULT_CHUNK_PAGES * FAULT_CHUNK_PAGES;
	} else {
		return failed(what, "unknown-loop");
	}
	printf("loop-result %s ops=%ld ns_per_op=%.1f\n", what, n,
	       (now_ns() - start) / n);
	return 0;
}
