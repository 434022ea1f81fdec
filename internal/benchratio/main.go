// Command benchratio reads `go test -bench` output made of rounds (each
// benchmark run once per round, the baseline and the guarded paths next to
// each other in time) and prints, for every benchmark, the median ratio of
// its time to its family's baseline in the same round, with the lowest and
// highest ratio, and the allocations it adds. On a shared, noisy machine the
// ratio of neighbours is steadier than either time alone.
//
//	go run ./internal/benchratio bench.txt
//
// A family is the benchmark name before the first slash, such as
// BenchmarkMiddleware or BenchmarkMiddlewareRedisParallel; the GOMAXPROCS
// suffix ("-2") and the suffix of a repeated name ("#01") are dropped. Each
// sample of "BenchmarkX/Sub" is compared with the runs of "BenchmarkX/Bare"
// (or the sub-benchmark that -base names) right before and after it in the
// file, with no sample of another family between them: their geometric
// mean, or the one there is. A family that repeats Bare between its paths
// gets a fair neighbour for each of them. A sub-benchmark named Warmup is
// left out.
//
// A second table compares throughputs with the runs of the sub-benchmark
// that -throughput names ("Baseline" by default), in the families that have
// one, the Bare runs (or those of -base) left out: the baseline's time per
// operation divided by the path's, so that 0.93x reads "93 % of the
// baseline's throughput". It is left out when no family has such runs;
// -throughput "" leaves it out always.
//
// Both tables report allocations as the median difference, per operation,
// from the neighbouring baseline runs, or "-" for output without
// allocations (-benchmem).
package main

import (
	"bufio"
	"errors"
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
	family    string // "BenchmarkX"
	sub       string // "First"; a repeated name's "#01" suffix removed
	ns        float64
	allocs    float64
	hasAllocs bool
}

func main() {
	base := flag.String("base", "Bare", "name of the sub-benchmark each family's times are divided by")
	throughput := flag.String("throughput", "Baseline", `name of the sub-benchmark whose throughput each family's is compared with; "" for none`)
	flag.Parse()
	if err := run(os.Stdout, flag.Arg(0), *base, *throughput); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// run reports on the file named path, or on standard input if path is "".
func run(w io.Writer, path, base, throughput string) error {
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
	if len(samples) == 0 {
		return errors.New("benchratio: no results of sub-benchmarks with ns/op")
	}
	// One width for the names of both tables, so that their columns align.
	width := len("benchmark")
	for _, s := range samples {
		width = max(width, len(s.family)+1+len(s.sub))
	}
	rows := compare(samples, base, "", false)
	if len(rows) == 0 {
		return fmt.Errorf("benchratio: no family has runs of %q", base)
	}
	fmt.Fprintf(w, "Time of each path / time of the %s runs around it, over the rounds:\n", base)
	writeTable(w, rows, width)
	if throughput == "" {
		return nil
	}
	// The time table already compares the baseline with base.
	if rows := compare(samples, throughput, base, true); len(rows) > 0 {
		fmt.Fprintf(w, "\nThroughput of each path / throughput of the %s runs around it (below 1: slower than %[1]s):\n", throughput)
		writeTable(w, rows, width)
	}
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
		family, sub, ok := strings.Cut(trimName(f[0]), "/")
		if !ok {
			continue
		}
		s := sample{family: family, sub: sub}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				s.ns = v
			case "allocs/op":
				s.allocs, s.hasAllocs = v, true
			}
		}
		if s.ns > 0 {
			out = append(out, s)
		}
	}
	return out, sc.Err()
}

// trimName drops the GOMAXPROCS suffix ("-2") and a repeated name's suffix
// ("#01") from a benchmark's name.
func trimName(name string) string {
	if i := strings.LastIndexByte(name, '-'); i > 0 && isDigits(name[i+1:]) {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, '#'); i > 0 && isDigits(name[i+1:]) {
		name = name[:i]
	}
	return name
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// row is what a table says of one benchmark.
type row struct {
	name   string
	ratios []float64 // sorted
	extra  []float64 // allocations per operation beyond the baseline's; sorted
}

// compare compares each sample, except those of base, skip and Warmup, with
// the runs of base just before and just after it in the same family (their
// geometric mean, or the one there is): the ratio of its time to theirs or,
// with throughput, of their time to its. The rows are in the order the
// benchmarks first ran.
func compare(samples []sample, base, skip string, throughput bool) []row {
	var rows []row
	index := map[string]int{}
	for i, s := range samples {
		if s.sub == base || s.sub == skip || s.sub == "Warmup" {
			continue
		}
		before := neighbour(samples, i, -1, base)
		after := neighbour(samples, i, +1, base)
		var ref sample
		switch {
		case before != nil && after != nil:
			ref = sample{
				ns:        math.Sqrt(before.ns * after.ns),
				allocs:    (before.allocs + after.allocs) / 2,
				hasAllocs: before.hasAllocs && after.hasAllocs,
			}
		case before != nil:
			ref = *before
		case after != nil:
			ref = *after
		default:
			continue
		}
		name := s.family + "/" + s.sub
		j, ok := index[name]
		if !ok {
			j = len(rows)
			index[name] = j
			rows = append(rows, row{name: name})
		}
		r := &rows[j]
		if throughput {
			r.ratios = append(r.ratios, ref.ns/s.ns)
		} else {
			r.ratios = append(r.ratios, s.ns/ref.ns)
		}
		if s.hasAllocs && ref.hasAllocs {
			r.extra = append(r.extra, s.allocs-ref.allocs)
		}
	}
	for i := range rows {
		slices.Sort(rows[i].ratios)
		slices.Sort(rows[i].extra)
	}
	return rows
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

// writeTable writes rows as a table whose first column, the names, is width
// wide.
func writeTable(w io.Writer, rows []row, width int) {
	fmt.Fprintf(w, "%-*s %7s %7s %7s %5s %8s\n", width, "benchmark", "median", "min", "max", "runs", "+allocs")
	for _, r := range rows {
		extra := "-"
		if len(r.extra) > 0 {
			m := math.Round(median(r.extra))
			if m == 0 {
				m = 0 // not "-0"
			}
			extra = fmt.Sprintf("%+.0f", m)
		}
		n := len(r.ratios)
		fmt.Fprintf(w, "%-*s %6.2fx %6.2fx %6.2fx %5d %8s\n",
			width, r.name, median(r.ratios), r.ratios[0], r.ratios[n-1], n, extra)
	}
}

func median(v []float64) float64 {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}
