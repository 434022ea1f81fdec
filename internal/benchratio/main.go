// Command benchratio reads `go test -bench` output made of rounds (each
// benchmark run once per round, the baseline and the guarded paths next to
// each other in time) and prints, for every benchmark, the median ratio of
// its time to its family's baseline in the same round, with the spread, and
// the allocations it adds. On a shared, noisy machine the ratio of
// neighbours is steadier than either time alone.
//
//	go run ./internal/benchratio bench.txt
//
// A sub-benchmark named Warmup is left out. Each sample of "BenchmarkX/Sub" is compared with the runs of
// "BenchmarkX/Bare" (or the sub-benchmark that -base names) right before and
// after it; a benchmark that repeats Bare between its paths gets a fair
// neighbour for each of them.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

type sample struct {
	family string // "BenchmarkX"
	sub    string // "First"; a repeated name's "#01" suffix removed
	ns     float64
	allocs float64
}

func main() {
	base := flag.String("base", "Bare", "name of the baseline sub-benchmark in each family")
	flag.Parse()
	if err := run(flag.Arg(0), *base); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// run reports on the file named path, or on standard input if path is "".
func run(path, base string) error {
	in := io.Reader(os.Stdin)
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	samples, err := parse(in)
	if err != nil {
		return err
	}
	report(os.Stdout, samples, base)
	return nil
}

// parse reads the samples in the order they ran.
func parse(r io.Reader) ([]sample, error) {
	var out []sample
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		if i := strings.IndexByte(name, '#'); i > 0 {
			name = name[:i] // a repeated sub-benchmark
		}
		i := strings.IndexByte(name, '/')
		if i < 0 {
			continue
		}
		s := sample{family: name[:i], sub: name[i+1:]}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				s.ns = v
			case "allocs/op":
				s.allocs = v
			}
		}
		if s.ns > 0 {
			out = append(out, s)
		}
	}
	return out, sc.Err()
}

// report compares each sample with the baseline runs just before and just
// after it in the same family (their geometric mean, or the one there is).
func report(w io.Writer, samples []sample, base string) {
	type result struct {
		ratios []float64
		extra  float64
	}
	results := map[string]*result{}
	var order []string
	for i, s := range samples {
		if s.sub == base || s.sub == "Warmup" {
			continue
		}
		before := neighbour(samples, i, -1, base)
		after := neighbour(samples, i, +1, base)
		var ref sample
		switch {
		case before != nil && after != nil:
			ref = sample{ns: math.Sqrt(before.ns * after.ns), allocs: before.allocs}
		case before != nil:
			ref = *before
		case after != nil:
			ref = *after
		default:
			continue
		}
		name := s.family + "/" + s.sub
		r, ok := results[name]
		if !ok {
			r = &result{extra: s.allocs - ref.allocs}
			results[name] = r
			order = append(order, name)
		}
		r.ratios = append(r.ratios, s.ns/ref.ns)
	}
	fmt.Fprintf(w, "%-36s %7s %7s %7s %6s %8s\n", "benchmark (time / bare)", "median", "min", "max", "runs", "+allocs")
	for _, name := range order {
		r := results[name]
		slices.Sort(r.ratios)
		n := len(r.ratios)
		fmt.Fprintf(w, "%-36s %6.2fx %6.2fx %6.2fx %6d %+8.0f\n",
			name, median(r.ratios), r.ratios[0], r.ratios[n-1], n, r.extra)
	}
}

// neighbour returns the nearest baseline sample of samples[i]'s family in
// direction dir, stopping at a sample of another family.
func neighbour(samples []sample, i, dir int, base string) *sample {
	for j := i + dir; j >= 0 && j < len(samples); j += dir {
		if samples[j].family != samples[i].family {
			return nil
		}
		if samples[j].sub == base {
			return &samples[j]
		}
	}
	return nil
}

func median(v []float64) float64 {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}
