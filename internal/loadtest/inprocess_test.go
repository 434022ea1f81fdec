package loadtest_test

import (
	"testing"

	"github.com/idemkey/idempotency/internal/loadtest"
)

// BenchmarkMiddlewareRedis is BenchmarkMiddleware of package httpmw on
// redisstore, with a Baseline of two plain round trips and a
// ReplayLocalCache (see [loadtest.Run]).
func BenchmarkMiddlewareRedis(b *testing.B) {
	loadtest.Run(b, loadtest.Middleware(), loadtest.NewRedis(b, poolSize).Backend(clients), false)
}

// BenchmarkMiddlewareRedisParallel is [BenchmarkMiddlewareRedis] with
// requests from 64 goroutines at once, through b.RunParallel.
func BenchmarkMiddlewareRedisParallel(b *testing.B) {
	loadtest.Run(b, loadtest.Middleware(), loadtest.NewRedis(b, poolSize).Backend(clients), true)
}

// BenchmarkInterceptorRedis is BenchmarkInterceptor of the root package on
// redisstore, with a Baseline of two plain round trips and a
// ReplayLocalCache (see [loadtest.Run]).
func BenchmarkInterceptorRedis(b *testing.B) {
	loadtest.Run(b, loadtest.Interceptor(), loadtest.NewRedis(b, poolSize).Backend(clients), false)
}

// BenchmarkInterceptorRedisParallel is [BenchmarkInterceptorRedis] with
// requests from 64 goroutines at once, through b.RunParallel.
func BenchmarkInterceptorRedisParallel(b *testing.B) {
	loadtest.Run(b, loadtest.Interceptor(), loadtest.NewRedis(b, poolSize).Backend(clients), true)
}
