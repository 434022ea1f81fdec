//go:build !unix

package loadtest_test

import "time"

// processCPU reports that this system's CPU time is not measured.
func processCPU() (time.Duration, bool) { return 0, false }
