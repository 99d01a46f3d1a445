/* The pause container of the e2e node's pods (testbed/images.py builds it, statically, into the pause image): it holds
 * the pod's namespaces, reaps the zombies of the processes that share its PID namespace, and exits 0 on SIGINT or
 * SIGTERM, as Kubernetes' own pause does. It does nothing else; no registry image is needed. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal_number) {
  (void)signal_number;
  _exit(0);
}

static void reap(int signal_number) {
  (void)signal_number;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

static int handle(int signal_number, void (*handler)(int), int flags) {
  struct sigaction action = {.sa_handler = handler, .sa_flags = flags};
  sigemptyset(&action.sa_mask);
  return sigaction(signal_number, &action, NULL);
}

int main(void) {
  if (getpid() != 1) {
    fputs("pause: warning: not PID 1, so zombies of other processes are not reaped here\n", stderr);
  }
  if (handle(SIGINT, stop, 0) < 0 || handle(SIGTERM, stop, 0) < 0 ||
      handle(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
