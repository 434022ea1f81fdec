package httpmw_test

import (
	"testing"

	"github.com/idemkey/idempotency/internal/loadtest"
)

// BenchmarkMiddleware interleaves the bare handler with each guarded path
// on the memory store, one request at a time: Warmup, Bare, NoKey, Bare,
// First, Bare, Replay, Bare (see [loadtest.Run]). The workload is net/http
// in process with a recorder, a 13-byte JSON request and a handler answering
// 201 with a 9-byte JSON body ([loadtest.Middleware]); every path sends the
// same request headers. The ratio of a path to the bare runs on either side
// of it (see internal/benchratio) is steadier on a noisy machine than either
// time alone. The same families on Redis are in internal/loadtest.
func BenchmarkMiddleware(b *testing.B) {
	loadtest.Run(b, loadtest.Middleware(), loadtest.Memory(), false)
}

// BenchmarkMiddlewareParallel is [BenchmarkMiddleware] with GOMAXPROCS
// goroutines sending requests at once, through b.RunParallel.
func BenchmarkMiddlewareParallel(b *testing.B) {
	loadtest.Run(b, loadtest.Middleware(), loadtest.Memory(), true)
}
