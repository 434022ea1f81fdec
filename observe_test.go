package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/internal/otelcheck"
	"github.com/idemkey/idempotency/store/memory"
)

// notHeldStore loses every claim before its response is stored.
type notHeldStore struct{ idempotency.Store }

func (notHeldStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return idempotency.ErrNotHeld
}

// rawKey is a client's key that must never appear in telemetry.
const rawKey = "raw-client-key-7f3a"

func TestEngineCountsEachOutcomeOnce(t *testing.T) {
	t.Parallel()
	ended := func(t *testing.T, ctx context.Context) context.Context {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		return ctx
	}
	tests := []struct {
		name  string
		store func(t *testing.T) idempotency.Store
		opts  []idempotency.Option
		run   func(t *testing.T, e *idempotency.Engine)
		want  map[string]int64
	}{
		{
			name: "executed",
			run: func(t *testing.T, e *idempotency.Engine) {
				x, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				require.NoError(t, x.Complete(jsonRecord(`{}`)))
				require.NoError(t, x.Complete(jsonRecord(`{}`)), "a second end is ignored")
			},
			want: map[string]int64{"executed POST": 1},
		},
		{
			name: "replayed",
			run: func(t *testing.T, e *idempotency.Engine) {
				x, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				require.NoError(t, x.Complete(jsonRecord(`{}`)))
				_, rec, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				require.NotNil(t, rec)
			},
			want: map[string]int64{"executed POST": 1, "replayed POST": 1},
		},
		{
			name: "in flight, then released",
			run: func(t *testing.T, e *idempotency.Engine) {
				x, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				_, _, err = e.Begin(t.Context(), req(rawKey, "a"))
				require.ErrorIs(t, err, idempotency.ErrInFlight)
				require.NoError(t, x.Release())
				require.NoError(t, x.Release())
			},
			want: map[string]int64{"in-flight POST": 1, "not-stored POST released": 1},
		},
		{
			name: "mismatch",
			run: func(t *testing.T, e *idempotency.Engine) {
				x, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				require.NoError(t, x.Complete(jsonRecord(`{}`)))
				_, _, err = e.Begin(t.Context(), req(rawKey, "b"))
				require.ErrorIs(t, err, idempotency.ErrFingerprintMismatch)
			},
			want: map[string]int64{"executed POST": 1, "mismatch POST": 1},
		},
		{
			name: "rejected by the adapter",
			run: func(t *testing.T, e *idempotency.Engine) {
				_, err := idempotency.ParseKey([]string{"a\x00b"}, false)
				require.ErrorIs(t, err, idempotency.ErrInvalidKey)
				e.Rejected(t.Context(), "POST", err)
				e.Rejected(t.Context(), "POST /charges/{id}", idempotency.ErrKeyRequired)
				e.Rejected(t.Context(), "POST", idempotency.ErrBodyTooLarge)
				e.Rejected(t.Context(), "/pkg.Svc/Method", errors.New("no fingerprint"))
			},
			want: map[string]int64{
				"invalid-key POST": 1, "key-required POST /charges/{id}": 1,
				"body-too-large POST": 1, "rejected /pkg.Svc/Method": 1,
			},
		},
		{
			name: "store unavailable",
			store: func(t *testing.T) idempotency.Store {
				return &faultyStore{Store: newMemory(t), claimErr: errors.New("down")}
			},
			run: func(t *testing.T, e *idempotency.Engine) {
				_, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.ErrorIs(t, err, idempotency.ErrStoreUnavailable)
			},
			want: map[string]int64{"store-unavailable POST": 1},
		},
		{
			name: "store unavailable when storing",
			store: func(t *testing.T) idempotency.Store {
				return &faultyStore{Store: newMemory(t), completeErr: errors.New("down")}
			},
			run: func(t *testing.T, e *idempotency.Engine) {
				x, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				require.ErrorIs(t, x.Complete(jsonRecord(`{}`)), idempotency.ErrStoreUnavailable)
			},
			want: map[string]int64{"store-unavailable POST complete": 1},
		},
		{
			name: "fail open",
			store: func(t *testing.T) idempotency.Store {
				return &faultyStore{Store: newMemory(t), claimErr: errors.New("down")}
			},
			opts: []idempotency.Option{idempotency.WithFailOpen(true)},
			run: func(t *testing.T, e *idempotency.Engine) {
				x, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				require.False(t, x.Protected())
				require.NoError(t, x.Complete(jsonRecord(`{}`)))
			},
			want: map[string]int64{"fail-open POST": 1},
		},
		{
			name: "canceled",
			store: func(t *testing.T) idempotency.Store {
				return &faultyStore{Store: newMemory(t), claimErr: context.Canceled}
			},
			run: func(t *testing.T, e *idempotency.Engine) {
				_, _, err := e.Begin(ended(t, t.Context()), req(rawKey, "a"))
				require.ErrorIs(t, err, context.Canceled)
			},
			want: map[string]int64{"canceled POST": 1},
		},
		{
			name: "not stored, with the reason",
			run: func(t *testing.T, e *idempotency.Engine) {
				for i, reason := range []string{idempotency.ReasonTooLarge, idempotency.ReasonPanic, idempotency.ReasonTooLarge} {
					x, _, err := e.Begin(t.Context(), req(rawKey+fmt.Sprint(i), "a"))
					require.NoError(t, err)
					require.NoError(t, x.Skip(reason))
					require.NoError(t, x.Complete(jsonRecord(`{}`)), "the first end wins")
				}
			},
			want: map[string]int64{"not-stored POST too-large": 2, "not-stored POST panic": 1},
		},
		{
			name: "not stored by the policy",
			opts: []idempotency.Option{idempotency.WithStorePolicy(idempotency.StoreSuccess)},
			run: func(t *testing.T, e *idempotency.Engine) {
				x, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				require.NoError(t, x.Complete(&idempotency.Record{Status: 500}))
			},
			want: map[string]int64{"not-stored POST policy": 1},
		},
		{
			name: "lease lost",
			store: func(t *testing.T) idempotency.Store {
				return notHeldStore{newMemory(t)}
			},
			run: func(t *testing.T, e *idempotency.Engine) {
				x, _, err := e.Begin(t.Context(), req(rawKey, "a"))
				require.NoError(t, err)
				require.ErrorIs(t, x.Complete(jsonRecord(`{}`)), idempotency.ErrNotHeld)
			},
			want: map[string]int64{"lease-lost POST": 1},
		},
		{
			name: "pattern",
			run: func(t *testing.T, e *idempotency.Engine) {
				r := req(rawKey, "a")
				r.Route = "POST /charges/ch_123"
				r.Pattern = "POST /charges/{id}"
				x, _, err := e.Begin(t.Context(), r)
				require.NoError(t, err)
				require.NoError(t, x.Complete(jsonRecord(`{}`)))
			},
			want: map[string]int64{"executed POST /charges/{id}": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			meters := otelcheck.NewMeters(t)
			var log otelcheck.Log
			var store idempotency.Store = newMemory(t)
			if tt.store != nil {
				store = tt.store(t)
			}
			opts := append([]idempotency.Option{quiet, meters.Option, idempotency.WithObserver(log.Observe)}, tt.opts...)
			e := idempotency.NewEngine(store, opts...)

			tt.run(t, e)

			assert.Equal(t, tt.want, meters.Decisions(t), "the counter")
			assert.Equal(t, tt.want, log.Series(), "the observer")
			meters.RequireNoKey(t, rawKey)
			for _, d := range log.Decisions() {
				if d.KeyHash != "" {
					assert.Len(t, d.KeyHash, 12)
					assert.NotContains(t, rawKey, d.KeyHash)
				}
				assert.GreaterOrEqual(t, d.Elapsed, d.Decide)
				assert.GreaterOrEqual(t, d.Elapsed, d.Store)
			}
		})
	}
}

func TestEngineObserverTimings(t *testing.T) {
	t.Parallel()
	meters := otelcheck.NewMeters(t)
	var log otelcheck.Log
	e := idempotency.NewEngine(newMemory(t), quiet, meters.Option, idempotency.WithObserver(log.Observe),
		idempotency.WithWait(10*time.Second))

	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	replayed := make(chan error, 1)
	go func() {
		_, _, err := e.Begin(t.Context(), req("k", "a"))
		replayed <- err
	}()
	// The duplicate is waiting once it was decided that it must.
	require.Eventually(t, func() bool {
		return meters.HistogramCounts(t, "idempotency.store.duration")["claim"] == 2
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, x.Complete(jsonRecord(`{}`)))
	require.NoError(t, <-replayed)

	ds := log.Decisions()
	require.Len(t, ds, 2)
	sort.Slice(ds, func(i, j int) bool { return ds[i].Outcome < ds[j].Outcome })
	executed, replay := ds[0], ds[1]
	assert.Equal(t, idempotency.OutcomeExecuted, executed.Outcome)
	assert.Equal(t, idempotency.OutcomeReplayed, replay.Outcome)
	assert.Equal(t, executed.KeyHash, replay.KeyHash, "one key, one hash")
	assert.Positive(t, executed.Store)
	assert.Zero(t, executed.Wait)
	assert.Positive(t, replay.Wait)
	assert.GreaterOrEqual(t, replay.Decide, replay.Wait)

	assert.Equal(t, map[string]uint64{"replayed": 1}, meters.HistogramCounts(t, "idempotency.wait.duration"))
	stores := meters.HistogramCounts(t, "idempotency.store.duration")
	assert.Equal(t, uint64(1), stores["complete"])
	assert.GreaterOrEqual(t, stores["claim"], uint64(3), "the first claim, the duplicate's first and last")
	assert.GreaterOrEqual(t, stores["wait"], uint64(1))
}

// tracing returns a tracer provider that records spans, and a context in a
// server span of its own.
func tracing(t *testing.T) (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	t.Helper()
	recorder := tracetest.NewSpanRecorder()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	t.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	return recorder, provider
}

// requireNoKeyInSpans fails if any span attribute or event attribute holds
// key.
func requireNoKeyInSpans(t *testing.T, spans []sdktrace.ReadOnlySpan, key string) {
	t.Helper()
	for _, s := range spans {
		attrs := s.Attributes()
		for _, ev := range s.Events() {
			attrs = append(attrs, ev.Attributes...)
		}
		for _, kv := range attrs {
			require.NotContains(t, kv.Value.String(), key, "span %s, attribute %s", s.Name(), kv.Key)
		}
	}
}

// decisionEvents returns the outcomes of the decision events on span.
func decisionEvents(span sdktrace.ReadOnlySpan) []string {
	var outcomes []string
	for _, ev := range span.Events() {
		if ev.Name != "idempotency.decision" {
			continue
		}
		for _, kv := range ev.Attributes {
			if kv.Key == "idempotency.outcome" {
				outcomes = append(outcomes, kv.Value.AsString())
			}
		}
	}
	return outcomes
}

func spanAttr(span sdktrace.ReadOnlySpan, key attribute.Key) string {
	for _, kv := range span.Attributes() {
		if kv.Key == key {
			return kv.Value.String()
		}
	}
	return ""
}

func TestEngineTraces(t *testing.T) {
	t.Parallel()
	recorder, provider := tracing(t)
	e := idempotency.NewEngine(newMemory(t), quiet, idempotency.WithTracerProvider(provider))
	const key = "key-0123456789-secret"

	request := func(name string) {
		ctx, span := provider.Tracer("test").Start(t.Context(), name, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		x, _, err := e.Begin(ctx, req(key, "a"))
		require.NoError(t, err)
		if x != nil {
			require.NoError(t, x.Complete(jsonRecord(`{}`)))
		}
	}
	request("first")
	request("retry")

	byName := map[string]sdktrace.ReadOnlySpan{}
	var stores []string
	for _, s := range recorder.Ended() {
		byName[s.Name()] = s
		if strings.HasPrefix(s.Name(), "idempotency.") {
			stores = append(stores, s.Name())
		}
	}
	first, retry := byName["first"], byName["retry"]
	require.NotNil(t, first)
	require.NotNil(t, retry)
	assert.Equal(t, []string{"executed"}, decisionEvents(first))
	require.Len(t, first.Events(), 2)
	assert.Equal(t, "idempotency.claimed", first.Events()[0].Name, "the claim, then the outcome")
	assert.Len(t, retry.Events(), 1, "a replay has its outcome only")
	assert.Equal(t, "executed", spanAttr(first, "idempotency.outcome"))
	assert.Equal(t, []string{"replayed"}, decisionEvents(retry))
	assert.Equal(t, "replayed", spanAttr(retry, "idempotency.outcome"))
	assert.ElementsMatch(t, []string{"idempotency.claim", "idempotency.complete", "idempotency.claim"}, stores)
	for _, s := range recorder.Ended() {
		if strings.HasPrefix(s.Name(), "idempotency.") {
			assert.True(t, s.Parent().IsValid(), "a store call's span has the request's for parent")
			assert.Equal(t, trace.SpanKindInternal, s.SpanKind())
		}
	}
	requireNoKeyInSpans(t, recorder.Ended(), key)
}

func TestEngineWithoutSpanStartsNone(t *testing.T) {
	t.Parallel()
	recorder, provider := tracing(t)
	e := idempotency.NewEngine(newMemory(t), quiet, idempotency.WithTracerProvider(provider))
	x, _, err := e.Begin(t.Context(), req("k", "a"))
	require.NoError(t, err)
	require.NoError(t, x.Complete(jsonRecord(`{}`)))
	assert.Empty(t, recorder.Ended(), "store calls of a request that is not traced are not traced")
}

func TestObservabilityOptionsRejectNil(t *testing.T) {
	t.Parallel()
	assert.PanicsWithValue(t, "idempotency: WithMeterProvider: provider must not be nil", func() {
		idempotency.NewEngine(newMemory(t), idempotency.WithMeterProvider(nil))
	})
	assert.PanicsWithValue(t, "idempotency: WithTracerProvider: provider must not be nil", func() {
		idempotency.NewEngine(newMemory(t), idempotency.WithTracerProvider(nil))
	})
}

func TestInterceptorCountsEachOutcomeOnce(t *testing.T) {
	t.Parallel()
	const route = paymentsv1connect.PaymentServiceChargeProcedure
	charge := func(t *testing.T, client paymentsv1connect.PaymentServiceClient, key string, amount int64) error {
		r := chargeRequest(key)
		r.Msg.AmountCents = amount
		_, err := client.Charge(t.Context(), r)
		return err
	}
	tests := []struct {
		name    string
		store   func(t *testing.T) idempotency.Store
		opts    []idempotency.Option
		handler func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error)
		run     func(t *testing.T, client paymentsv1connect.PaymentServiceClient)
		want    map[string]int64
	}{
		{
			name: "executed, replayed, mismatch",
			run: func(t *testing.T, client paymentsv1connect.PaymentServiceClient) {
				require.NoError(t, charge(t, client, rawKey, 1))
				require.NoError(t, charge(t, client, rawKey, 1))
				require.Equal(t, connect.CodeInvalidArgument, connect.CodeOf(charge(t, client, rawKey, 2)))
			},
			want: map[string]int64{"executed " + route: 1, "replayed " + route: 1, "mismatch " + route: 1},
		},
		{
			name: "invalid key and key required",
			opts: []idempotency.Option{idempotency.WithRequireKey(true)},
			run: func(t *testing.T, client paymentsv1connect.PaymentServiceClient) {
				require.Equal(t, connect.CodeInvalidArgument, connect.CodeOf(charge(t, client, strings.Repeat("x", 300), 1)))
				require.Equal(t, connect.CodeInvalidArgument, connect.CodeOf(charge(t, client, "", 1)))
			},
			want: map[string]int64{"invalid-key " + route: 1, "key-required " + route: 1},
		},
		{
			name: "store unavailable",
			store: func(t *testing.T) idempotency.Store {
				s := newCountingStore(t)
				s.claim = failingClaim
				return s
			},
			run: func(t *testing.T, client paymentsv1connect.PaymentServiceClient) {
				require.Equal(t, connect.CodeUnavailable, connect.CodeOf(charge(t, client, rawKey, 1)))
			},
			want: map[string]int64{"store-unavailable " + route: 1},
		},
		{
			name: "not stored by the policy",
			handler: func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				return nil, connect.NewError(connect.CodeResourceExhausted, errors.New("slow down"))
			},
			run: func(t *testing.T, client paymentsv1connect.PaymentServiceClient) {
				require.Equal(t, connect.CodeResourceExhausted, connect.CodeOf(charge(t, client, rawKey, 1)))
			},
			want: map[string]int64{"not-stored " + route + " policy": 1},
		},
		{
			name:  "lease lost",
			store: func(t *testing.T) idempotency.Store { return notHeldStore{newMemory(t)} },
			run: func(t *testing.T, client paymentsv1connect.PaymentServiceClient) {
				require.NoError(t, charge(t, client, rawKey, 1))
			},
			want: map[string]int64{"lease-lost " + route: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			meters := otelcheck.NewMeters(t)
			var log otelcheck.Log
			var store idempotency.Store = newMemory(t)
			if tt.store != nil {
				store = tt.store(t)
			}
			svc := &paymentServer{charge: chargeHandler}
			if tt.handler != nil {
				svc.charge = tt.handler
			}
			opts := append([]idempotency.Option{meters.Option, idempotency.WithObserver(log.Observe)}, tt.opts...)
			client := guarded(t, svc, store, opts...)()

			tt.run(t, client)

			assert.Equal(t, tt.want, meters.Decisions(t), "the counter")
			assert.Equal(t, tt.want, log.Series(), "the observer")
			meters.RequireNoKey(t, rawKey)
		})
	}
}

func TestInterceptorCountsInFlight(t *testing.T) {
	t.Parallel()
	const route = paymentsv1connect.PaymentServiceChargeProcedure
	meters := otelcheck.NewMeters(t)
	entered, release := make(chan struct{}), make(chan struct{})
	svc := &paymentServer{charge: func(ctx context.Context, r *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		close(entered)
		<-release
		return chargeHandler(ctx, r)
	}}
	client := guarded(t, svc, newMemory(t), meters.Option)()

	first := make(chan error, 1)
	go func() {
		_, err := client.Charge(t.Context(), chargeRequest(rawKey))
		first <- err
	}()
	<-entered
	_, err := client.Charge(t.Context(), chargeRequest(rawKey))
	require.Equal(t, connect.CodeAborted, connect.CodeOf(err))
	close(release)
	require.NoError(t, <-first)

	assert.Equal(t, map[string]int64{"in-flight " + route: 1, "executed " + route: 1}, meters.Decisions(t))
}

// tracedServer starts the payment service behind the interceptor, inside
// a server span that a handler outside starts for each request, as otelhttp
// or otelconnect would.
func tracedServer(t *testing.T, provider trace.TracerProvider, svc *paymentServer, opts ...idempotency.Option) paymentsv1connect.PaymentServiceClient {
	t.Helper()
	mux := http.NewServeMux()
	opts = append([]idempotency.Option{quiet}, opts...)
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc, connect.WithInterceptors(idempotency.NewInterceptor(newMemory(t), opts...))))
	tracer := provider.Tracer("test")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, span := tracer.Start(r.Context(), "server "+r.URL.Path, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		mux.ServeHTTP(w, r.WithContext(ctx))
	}))
	t.Cleanup(srv.Close)
	return paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL)
}

func TestInterceptorReplayShowsOnTheServerSpan(t *testing.T) {
	t.Parallel()
	recorder, provider := tracing(t)
	client := tracedServer(t, provider, &paymentServer{charge: chargeHandler}, idempotency.WithTracerProvider(provider))

	_, err := client.Charge(t.Context(), chargeRequest(rawKey))
	require.NoError(t, err)
	res, err := client.Charge(t.Context(), chargeRequest(rawKey))
	require.NoError(t, err)
	require.Equal(t, "true", res.Header().Get(idempotency.DefaultReplayHeader))

	var outcomes []string
	for _, s := range recorder.Ended() {
		if s.SpanKind() == trace.SpanKindServer {
			outcomes = append(outcomes, spanAttr(s, "idempotency.outcome"))
			assert.Len(t, decisionEvents(s), 1, "one decision event per request")
		}
	}
	assert.ElementsMatch(t, []string{"executed", "replayed"}, outcomes)
	requireNoKeyInSpans(t, recorder.Ended(), rawKey)
}

// BenchmarkObserve measures what observing costs on the engine's path, on
// the memory store, for a first request (claim and store) and a replay:
// with nothing configured, with an observer, with the OpenTelemetry SDK's
// metrics (a manual reader), and with its metrics and traces (every span
// sampled, none exported) under a server span that the benchmark starts;
// span-only is that server span alone, to subtract.
func BenchmarkObserve(b *testing.B) {
	reader := sdkmetric.NewManualReader()
	meters := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tracers := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() {
		_ = meters.Shutdown(context.Background())
		_ = tracers.Shutdown(context.Background())
	})
	server := tracers.Tracer("bench")
	variants := []struct {
		name  string
		opts  []idempotency.Option
		trace bool
	}{
		{name: "off"},
		{name: "observer", opts: []idempotency.Option{idempotency.WithObserver(func(context.Context, idempotency.Decision) {})}},
		{name: "metrics", opts: []idempotency.Option{idempotency.WithMeterProvider(meters)}},
		{name: "metrics+traces", opts: []idempotency.Option{idempotency.WithMeterProvider(meters), idempotency.WithTracerProvider(tracers)}, trace: true},
	}
	rec := jsonRecord(`{"id":1}`)
	b.Run("span-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, span := server.Start(b.Context(), "POST /charges", trace.WithSpanKind(trace.SpanKindServer))
			span.End()
		}
	})
	for _, v := range variants {
		request := func(b *testing.B, e *idempotency.Engine, r idempotency.Request) {
			ctx := b.Context()
			var span trace.Span
			if v.trace {
				ctx, span = server.Start(ctx, "POST /charges", trace.WithSpanKind(trace.SpanKindServer))
			}
			x, _, err := e.Begin(ctx, r)
			if err != nil {
				b.Fatal(err)
			}
			if x != nil {
				if err := x.Complete(rec); err != nil {
					b.Fatal(err)
				}
			}
			if span != nil {
				span.End()
			}
		}
		b.Run("first/"+v.name, func(b *testing.B) {
			e := idempotency.NewEngine(newMemoryB(b), append([]idempotency.Option{quiet}, v.opts...)...)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				request(b, e, req("k"+strconv.Itoa(i), "a"))
			}
		})
		b.Run("replay/"+v.name, func(b *testing.B) {
			e := idempotency.NewEngine(newMemoryB(b), append([]idempotency.Option{quiet}, v.opts...)...)
			request(b, e, req("k", "a"))
			b.ReportAllocs()
			for b.Loop() {
				request(b, e, req("k", "a"))
			}
		})
	}
}

func newMemoryB(b *testing.B) *memory.Store {
	s := memory.New()
	b.Cleanup(func() { _ = s.Close() })
	return s
}
