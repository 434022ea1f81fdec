package idempotency_test

import (
	"testing"

	"github.com/idemkey/idempotency/internal/loadtest"
)

// BenchmarkInterceptor measures a Connect JSON unary call of the payments
// service in process, on the memory store, one request at a time, with the
// same request headers on every path: Warmup, Bare, NoKey, Bare, First,
// Bare, Replay, Bare (see [loadtest.Run]). The bare handler runs before and
// after each guarded path (and once to warm up), so that
// internal/benchratio can compare each path with its neighbours in time.
// The same families on Redis are in internal/loadtest.
func BenchmarkInterceptor(b *testing.B) {
	loadtest.Run(b, loadtest.Interceptor(), loadtest.Memory(), false)
}

// BenchmarkInterceptorParallel is [BenchmarkInterceptor] with GOMAXPROCS
// goroutines sending requests at once, through b.RunParallel.
func BenchmarkInterceptorParallel(b *testing.B) {
	loadtest.Run(b, loadtest.Interceptor(), loadtest.Memory(), true)
}
