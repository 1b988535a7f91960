/*
 * ferry-counter: the workload the e2e harness runs in real-node pods. It counts once per
 * interval (default 1 s; argv[1] overrides, in ms), prints the count to stdout and keeps it in
 * a heap page, so a checkpoint/restore test can tell from the log that the process kept its
 * memory across the migration. Built with gcc -static so its image needs no libc layer.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
	long interval_ms = argc > 1 ? atol(argv[1]) : 1000;
	if (interval_ms <= 0) interval_ms = 1000;
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	unsigned long *count = calloc(1, sizeof *count);
	if (!count) return 1;
	struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
	while (!stop) {
		printf("ferry-counter %lu\n", (*count)++);
		fflush(stdout);
		nanosleep(&ts, NULL);
	}
	printf("ferry-counter stopped at %lu\n", *count);
	return 0;
}
