package httpmw_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind, such as a lease
// renewal that outlived its request.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
