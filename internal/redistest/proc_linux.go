//go:build linux

package redistest

import (
	"os/exec"
	"syscall"
)

// dieWithParent asks the kernel to kill the server when the thread that
// started it exits, so that a test binary that dies without cleaning up does
// not leave servers behind.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
