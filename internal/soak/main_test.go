package soak

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks, after every test, that no goroutine was left behind;
// [TestSoak] also checks it on its own, to report the figure.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
