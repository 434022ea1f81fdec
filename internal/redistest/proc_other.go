//go:build !linux

package redistest

import "os/exec"

// dieWithParent does nothing where the kernel cannot tie a child's life to
// its parent's: a test binary that dies without cleaning up leaves its
// servers running there.
func dieWithParent(*exec.Cmd) {}
