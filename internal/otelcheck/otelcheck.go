// Package otelcheck reads what the idempotency library records on
// OpenTelemetry, for the tests of every adapter: the decisions counter and
// the histograms through the SDK's manual reader, and the decisions an
// observer is told.
package otelcheck

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/idemkey/idempotency"
)

// Metric names and attributes, as the library records them.
const (
	decisionsMetric = "idempotency.decisions"
	attrOutcome     = attribute.Key("idempotency.outcome")
	attrRoute       = attribute.Key("idempotency.route")
	attrReason      = attribute.Key("idempotency.reason")
	attrOperation   = attribute.Key("idempotency.store.operation")
)

// Meters is an OpenTelemetry SDK meter provider read by a manual reader.
type Meters struct {
	reader *sdkmetric.ManualReader
	// Option makes an engine or adapter record on these meters.
	Option idempotency.Option
}

// NewMeters returns meters that are shut down when the test ends.
func NewMeters(tb testing.TB) *Meters {
	tb.Helper()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tb.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	return &Meters{reader: reader, Option: idempotency.WithMeterProvider(provider)}
}

// Collect returns what has been recorded so far.
func (m *Meters) Collect(tb testing.TB) metricdata.ResourceMetrics {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, m.reader.Collect(tb.Context(), &rm))
	return rm
}

// Decisions returns the decisions counter, each series named as [Series]
// names it, to its value.
func (m *Meters) Decisions(tb testing.TB) map[string]int64 {
	tb.Helper()
	got := map[string]int64{}
	for _, sm := range m.Collect(tb).ScopeMetrics {
		for _, metric := range sm.Metrics {
			if metric.Name != decisionsMetric {
				continue
			}
			assert.Equal(tb, "{request}", metric.Unit)
			sum, ok := metric.Data.(metricdata.Sum[int64])
			require.True(tb, ok, "a counter is a sum of int64")
			for _, dp := range sum.DataPoints {
				got[Series(dp.Attributes)] += dp.Value
			}
		}
	}
	return got
}

// Series names a series of the decisions counter "outcome route", or
// "outcome route reason" when it has a reason.
func Series(set attribute.Set) string {
	outcome, _ := set.Value(attrOutcome)
	route, _ := set.Value(attrRoute)
	s := outcome.AsString() + " " + route.AsString()
	if reason, ok := set.Value(attrReason); ok {
		s += " " + reason.AsString()
	}
	return s
}

// HistogramCounts returns, for the histogram name, its count by operation
// attribute, or by outcome for a histogram without one.
func (m *Meters) HistogramCounts(tb testing.TB, name string) map[string]uint64 {
	tb.Helper()
	got := map[string]uint64{}
	for _, sm := range m.Collect(tb).ScopeMetrics {
		for _, metric := range sm.Metrics {
			if metric.Name != name {
				continue
			}
			assert.Equal(tb, "s", metric.Unit)
			hist, ok := metric.Data.(metricdata.Histogram[float64])
			require.True(tb, ok, "a histogram of float64")
			for _, dp := range hist.DataPoints {
				label, ok := dp.Attributes.Value(attrOperation)
				if !ok {
					label, _ = dp.Attributes.Value(attrOutcome)
				}
				got[label.AsString()] += dp.Count
			}
		}
	}
	return got
}

// RequireNoKey fails if any attribute of any metric holds key.
func (m *Meters) RequireNoKey(tb testing.TB, key string) {
	tb.Helper()
	for _, sm := range m.Collect(tb).ScopeMetrics {
		for _, metric := range sm.Metrics {
			var sets []attribute.Set
			switch d := metric.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					sets = append(sets, dp.Attributes)
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					sets = append(sets, dp.Attributes)
				}
			}
			for _, set := range sets {
				for _, kv := range set.ToSlice() {
					require.NotContains(tb, kv.Value.String(), key, "metric %s, attribute %s", metric.Name, kv.Key)
				}
			}
		}
	}
}

// Log is an observer that keeps the decisions it is told, for
// [idempotency.WithObserver](log.Observe). It is safe for concurrent use.
type Log struct {
	mu  sync.Mutex
	got []idempotency.Decision
}

// Observe keeps d.
func (l *Log) Observe(_ context.Context, d idempotency.Decision) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, d)
}

// Decisions returns the decisions kept so far.
func (l *Log) Decisions() []idempotency.Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]idempotency.Decision(nil), l.got...)
}

// Series returns the decisions counted as the decisions counter's series.
func (l *Log) Series() map[string]int64 {
	got := map[string]int64{}
	for _, d := range l.Decisions() {
		s := d.Outcome + " " + d.Route
		if d.Reason != "" {
			s += " " + d.Reason
		}
		got[s]++
	}
	return got
}
