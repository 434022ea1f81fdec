// Package loadtest holds the library's benchmarks: the matrix of paths,
// workloads and stores that `make bench` and `make bench-redis` run, and a
// load benchmark over real loopback HTTP.
//
// # The matrix
//
// [Run] runs one family of sub-benchmarks of a [Workload] on the stores of
// a [Backend], serially or with b.RunParallel: the bare handler, a request
// without a key, a first execution, a replay, and on Redis a baseline of
// plain round trips and a replay with a local cache. There are two
// workloads, each with the same headers on every path:
//
//   - [Middleware]: the net/http middleware, a 13-byte JSON request and a
//     handler answering 201 with a 9-byte JSON body.
//   - [Interceptor]: the Connect interceptor, a Connect JSON unary call of
//     the payments service.
//
// and two backends: [Memory], the memory store, and [Redis.Backend],
// redisstore on a throwaway redis-server on the same machine (or the Redis
// at REDIS_ADDR). The families on the memory store are BenchmarkMiddleware
// and BenchmarkMiddlewareParallel in package httpmw, and
// BenchmarkInterceptor and BenchmarkInterceptorParallel in the root
// package; those on Redis are BenchmarkMiddlewareRedis,
// BenchmarkMiddlewareRedisParallel, BenchmarkInterceptorRedis and
// BenchmarkInterceptorRedisParallel in this package, whose parallel
// families send requests from 64 goroutines. Requests go to the handler in
// process, through an httptest recorder.
//
// # Over loopback HTTP
//
// BenchmarkLoopback measures the middleware over Redis as a service sees
// it: 64 concurrent clients send the middleware workload's requests over
// real loopback HTTP to an httptest server. It runs:
//
//   - Bare: the handler alone.
//   - Baseline: the handler plus two plain Redis round trips of the sizes
//     the middleware sends (a GET of a key, then a SET of a record-sized
//     value with an expiry), on a go-redis client with the same options
//     (see [Redis.Baseline]). It is what a first execution cannot go below:
//     the middleware's target is at least 0.9 times its throughput.
//   - First: the middleware over redisstore, a fresh key per request: a
//     claim and a completion, two round trips.
//   - Replay and ReplayLocalCache: replays of 16 hot keys, without and with
//     redisstore.WithLocalCache (which answers them without a round trip).
//   - NoKey: the middleware, on requests without a key.
//
// Each reports requests per second ("req/s") beside ns/op, and the CPU time
// per request of the test process, clients and server together
// ("cpu-ns/op"), and of Redis ("redis-cpu-ns/op", from INFO cpu, so only
// meaningful on a Redis of the benchmark's own). On a machine whose other
// load takes CPU from the single-threaded Redis, Redis's time per request
// bounds the throughput.
//
// # Running them
//
// The machine is usually shared, and its load drifts: compare medians of
// several rounds, with the runs of the baseline and the guarded paths
// interleaved, rather than -count, which runs each benchmark its whole
// count at once. `make bench-redis` does that, and internal/benchratio then
// prints each path's time against the Bare runs around it and its
// throughput against the Baseline runs around it. By hand:
//
//	go test -c -o loadtest.test ./internal/loadtest
//	for round in 1 2 3 4 5 6; do
//		./loadtest.test -test.run '^$' -test.bench '^BenchmarkMiddlewareRedis$' -test.benchmem -test.benchtime 0.5s
//		for bench in Baseline First Bare NoKey Replay ReplayLocalCache; do
//			./loadtest.test -test.run '^$' -test.bench "^BenchmarkLoopback\$/^$bench\$" -test.benchtime 2s
//		done
//	done | tee loadtest.txt
//	go run ./internal/benchratio loadtest.txt
package loadtest
