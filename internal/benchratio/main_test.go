package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rounds is two rounds of a serial and a parallel family on Redis, as make
// bench-redis writes them, with a line that is not a result between them.
const rounds = `
BenchmarkMiddlewareRedis/Warmup-2          100   1000 ns/op   10 B/op   20 allocs/op
BenchmarkMiddlewareRedis/Bare-2            100   1000 ns/op   10 B/op   20 allocs/op
BenchmarkMiddlewareRedis/Baseline-2        100  10000 ns/op   10 B/op   50 allocs/op
BenchmarkMiddlewareRedis/First-2           100  12500 ns/op   10 B/op   60 allocs/op
BenchmarkMiddlewareRedis/Baseline#01-2     100  10000 ns/op   10 B/op   50 allocs/op
BenchmarkMiddlewareRedis/Bare#01-2         100   4000 ns/op   10 B/op   20 allocs/op
BenchmarkMiddlewareRedisParallel/Bare-2    100    500 ns/op   10 B/op   21 allocs/op
BenchmarkMiddlewareRedisParallel/First-2   100   5000 ns/op   10 B/op   61 allocs/op
BenchmarkMiddlewareRedisParallel/Bare#01-2 100    500 ns/op   10 B/op   21 allocs/op
PASS
BenchmarkMiddlewareRedis/Bare-2            100   1000 ns/op   10 B/op   20 allocs/op
BenchmarkMiddlewareRedis/Baseline-2        100  10000 ns/op   10 B/op   50 allocs/op
BenchmarkMiddlewareRedis/First-2           100  10000 ns/op   10 B/op   61 allocs/op
BenchmarkMiddlewareRedis/Baseline#01-2     100  10000 ns/op   10 B/op   50 allocs/op
BenchmarkMiddlewareRedis/Bare#01-2         100   1000 ns/op   10 B/op   20 allocs/op
BenchmarkLoopback/First-2                  100  20000 ns/op   5000 req/s
BenchmarkLoopback/Bare                     100  10000 ns/op   10000 req/s
`

func TestParse(t *testing.T) {
	t.Parallel()
	samples, err := parse(strings.NewReader(rounds))
	require.NoError(t, err)
	require.Len(t, samples, 16)
	assert.Equal(t, sample{family: "BenchmarkMiddlewareRedis", sub: "Baseline", ns: 10000, allocs: 50, hasAllocs: true}, samples[4])
	assert.Equal(t, sample{family: "BenchmarkMiddlewareRedisParallel", sub: "Bare", ns: 500, allocs: 21, hasAllocs: true}, samples[8])
	assert.Equal(t, sample{family: "BenchmarkLoopback", sub: "Bare", ns: 10000}, samples[15], "a name without a GOMAXPROCS suffix")
}

func TestCompare(t *testing.T) {
	t.Parallel()
	samples, err := parse(strings.NewReader(rounds))
	require.NoError(t, err)
	tests := []struct {
		name       string
		base       string
		skip       string
		throughput bool
		want       []row
	}{
		{
			name: "time",
			base: "Bare",
			want: []row{
				// The Bare runs around the first Baseline take 1000 and
				// 4000 ns: their geometric mean is 2000.
				{name: "BenchmarkMiddlewareRedis/Baseline", ratios: []float64{5, 5, 10, 10}, extra: []float64{30, 30, 30, 30}},
				{name: "BenchmarkMiddlewareRedis/First", ratios: []float64{6.25, 10}, extra: []float64{40, 41}},
				{name: "BenchmarkMiddlewareRedisParallel/First", ratios: []float64{10}, extra: []float64{40}},
				{name: "BenchmarkLoopback/First", ratios: []float64{2}},
			},
		},
		{
			name:       "throughput",
			base:       "Baseline",
			throughput: true,
			want: []row{
				{name: "BenchmarkMiddlewareRedis/Bare", ratios: []float64{2.5, 10, 10, 10}, extra: []float64{-30, -30, -30, -30}},
				{name: "BenchmarkMiddlewareRedis/First", ratios: []float64{0.8, 1}, extra: []float64{10, 11}},
			},
		},
		{
			name:       "throughput without Bare",
			base:       "Baseline",
			skip:       "Bare",
			throughput: true,
			want: []row{
				{name: "BenchmarkMiddlewareRedis/First", ratios: []float64{0.8, 1}, extra: []float64{10, 11}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, compare(samples, tt.base, tt.skip, tt.throughput))
		})
	}
}

func TestTrimName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		want string
	}{
		{name: "BenchmarkX/First-2", want: "BenchmarkX/First"},
		{name: "BenchmarkX/Bare#03-16", want: "BenchmarkX/Bare"},
		{name: "BenchmarkX/Bare#03", want: "BenchmarkX/Bare"},
		{name: "BenchmarkX/Replay-Cache", want: "BenchmarkX/Replay-Cache"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, trimName(tt.name), tt.name)
	}
}

func TestRun(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bench.txt")
	require.NoError(t, os.WriteFile(path, []byte(rounds), 0o600))
	var out strings.Builder
	require.NoError(t, run(&out, path, "Bare", "Baseline"))
	want := `Time of each path / time of the Bare runs around it, over the rounds:
benchmark                               median     min     max  runs  +allocs
BenchmarkMiddlewareRedis/Baseline        7.50x   5.00x  10.00x     4      +30
BenchmarkMiddlewareRedis/First           8.12x   6.25x  10.00x     2      +41
BenchmarkMiddlewareRedisParallel/First  10.00x  10.00x  10.00x     1      +40
BenchmarkLoopback/First                  2.00x   2.00x   2.00x     1        -

Throughput of each path / throughput of the Baseline runs around it (below 1: slower than Baseline):
benchmark                               median     min     max  runs  +allocs
BenchmarkMiddlewareRedis/First           0.90x   0.80x   1.00x     2      +11
`
	assert.Equal(t, want, out.String())
}
