// The Go runtime sizes itself for GOMAXPROCS once, before any Go code runs,
// from the environment it finds on the initial stack; runtime.GOMAXPROCS(1)
// in main comes after the runtime and the package initializers have run on
// every core's P, and an idle usernet started so kept about half a MiB
// more of private memory than one started with GOMAXPROCS=1 in its
// environment. So when GOMAXPROCS is not set, this constructor, which runs
// before the runtime starts, puts GOMAXPROCS=1 into the environment array
// the runtime will read, in the place of one other entry; main's init
// (oneproc.go) gives that entry back and removes GOMAXPROCS before anything
// else can see the swap. An environment without such an entry is left as
// it is.
#include <stddef.h>
#include <string.h>

static char one[] = "GOMAXPROCS=1";
char *usernet_displaced_env; // the entry GOMAXPROCS=1 stands in for; NULL: none

static int has_prefix(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

__attribute__((constructor)) static void usernet_oneproc(int argc, char **argv, char **envp) {
	(void)argc;
	(void)argv;
	if (envp == NULL)
		return;
	int pick = -1;
	for (int i = 0; envp[i] != NULL; i++) {
		if (has_prefix(envp[i], "GOMAXPROCS="))
			return; // the user's choice: main's oneProc reads it
		// Not what the runtime reads while it starts (GODEBUG, GOGC,
		// GOTRACEBACK, GOMEMLIMIT...), nor the re-executed helpers'.
		if (has_prefix(envp[i], "GO") || has_prefix(envp[i], "_USERNET_") || strchr(envp[i], '=') == NULL)
			continue;
		// The shell's "_" (the last command) first: nothing reads it.
		if (pick < 0 || !has_prefix(envp[pick], "_="))
			pick = i;
	}
	if (pick < 0)
		return;
	usernet_displaced_env = envp[pick];
	envp[pick] = one;
}
