package integration

import (
	"testing"

	"github.com/idemkey/idempotency/internal/redistest"
)

// TestMain stops the Redis server shared by the tests when they end.
// goleak cannot wrap it here, since both end the process; leaks are checked
// by [TestNoGoroutineLeft] instead.
func TestMain(m *testing.M) { redistest.Main(m) }
