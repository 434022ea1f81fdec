// Package adaptertest is one behaviour suite for the RPC adapters of the
// idempotency library: the Connect v1 interceptor and the connect-go v2
// interceptor run the same table ([Run]), and they and the grpc-go
// interceptor the same observability table ([RunObservability]), each
// through a small [Adapter] that translates its framework's server, client,
// metadata and errors.
package adaptertest

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/store/memory"
)

// Codes used by the suite (Connect and gRPC share their numbers).
const (
	CodeCanceled           = 1
	CodeUnknown            = 2
	CodeInvalidArgument    = 3
	CodeFailedPrecondition = 9
	CodeAborted            = 10
	CodeInternal           = 13
	CodeUnavailable        = 14
)

// A Handler is the Charge RPC of the payments service in framework-neutral
// terms: md sets response headers and trailers in the framework's call info.
// To fail, it returns a [*RPCError] (the adapter turns it into its framework's
// error) or any other error.
type Handler func(ctx context.Context, req *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error)

// Metadata sets a handler's response headers and trailers.
type Metadata interface {
	SetHeader(key string, values ...string)
	SetTrailer(key string, values ...string)
}

// An RPCError is an RPC error: the handler's, or what a client received.
type RPCError struct {
	Code    uint32
	Message string
	// Details are the error's details, each its full message name and
	// binary value.
	Details []Detail
}

// A Detail is one error detail.
type Detail struct {
	Type  string
	Value []byte
}

// Error describes the error.
func (f *RPCError) Error() string { return fmt.Sprintf("code %d: %s", f.Code, f.Message) }

// A Result is what a client received from one call.
type Result struct {
	Msg *paymentsv1.ChargeResponse
	Err *RPCError
	// Header and Trailer are the response headers and trailers. A client
	// that cannot tell them apart on an error (connect-go v1 merges both
	// into the error's metadata) puts everything in Header.
	Header, Trailer http.Header
}

// Meta returns the values of key in the headers, else in the trailers.
func (r Result) Meta(key string) string {
	if v := r.Header.Get(key); v != "" {
		return v
	}
	return r.Trailer.Get(key)
}

// A Server is a started server with a guarded Charge RPC.
type Server interface {
	// Call calls Charge through one of the adapter's protocols with the
	// given key header values (none: no key), bounded by ctx.
	Call(ctx context.Context, protocol string, keys []string, req *paymentsv1.ChargeRequest) Result
}

// An Adapter starts servers of one framework.
type Adapter struct {
	// Name names the adapter in test names.
	Name string
	// Protocols are the client configurations that Call accepts, such as
	// "connect+json", "grpc" or "inprocess".
	Protocols []string
	// Start starts a server whose Charge RPC runs h, guarded over store
	// with opts, and stops it when the test ends.
	Start func(t *testing.T, h Handler, store idempotency.Store, opts ...idempotency.Option) Server
}

// Run runs every case of the suite against a.
func Run(t *testing.T, a Adapter) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, a)
		})
	}
}

type suiteCase struct {
	name string
	run  func(t *testing.T, a Adapter)
}

// counted wraps a handler with a run counter.
func counted(h Handler) (Handler, *atomic.Int64) {
	var n atomic.Int64
	return func(ctx context.Context, req *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error) {
		n.Add(1)
		return h(ctx, req, md)
	}, &n
}

// Charge is the suite's usual handler: a response with headers, a trailer
// and a header value that is not UTF-8.
func Charge(_ context.Context, req *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error) {
	md.SetHeader("X-Charge-Id", "ch_"+req.GetAccountId())
	md.SetHeader("X-Multi", "a", "b")
	md.SetHeader("X-Raw", "caf\xe9")
	md.SetTrailer("X-Charge-Trailer", "done")
	return &paymentsv1.ChargeResponse{
		ChargeId:    "ch_" + req.GetAccountId(),
		Status:      "succeeded",
		AmountCents: req.GetAmountCents(),
		CreatedAt:   timestamppb.New(time.Unix(1700000000, 0)),
	}, nil
}

// Request is a charge request.
func Request(account string) *paymentsv1.ChargeRequest {
	return &paymentsv1.ChargeRequest{AccountId: account, AmountCents: 1250, Currency: "EUR", Metadata: map[string]string{"b": "2", "a": "1"}}
}

// Options are the suite's engine options: quiet logs.
var quiet = idempotency.WithLogger(slog.New(slog.DiscardHandler))

func start(t *testing.T, a Adapter, h Handler, store idempotency.Store, opts ...idempotency.Option) Server {
	t.Helper()
	return a.Start(t, h, store, append([]idempotency.Option{quiet}, opts...)...)
}

// SameAnswer asserts that a replay is the first answer again, marker apart.
func SameAnswer(t *testing.T, first, replay Result, replayHeader string) {
	t.Helper()
	if first.Err != nil {
		require.NotNil(t, replay.Err, "replay of an error succeeded")
		assert.Equal(t, *first.Err, *replay.Err)
	} else {
		require.Nil(t, replay.Err)
		assert.True(t, proto.Equal(first.Msg, replay.Msg), "messages differ: %v and %v", first.Msg, replay.Msg)
		a, err := proto.MarshalOptions{Deterministic: true}.Marshal(first.Msg)
		require.NoError(t, err)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(replay.Msg)
		require.NoError(t, err)
		assert.Equal(t, a, b, "message bytes")
	}
	assert.Empty(t, first.Meta(replayHeader), "first answer marked as a replay")
	assert.Equal(t, "true", replay.Meta(replayHeader), "replay marker")
	assert.Equal(t, visible(first.Header, replayHeader), visible(replay.Header, replayHeader), "headers")
	assert.Equal(t, visible(first.Trailer, replayHeader), visible(replay.Trailer, replayHeader), "trailers")
}

// visible leaves out what differs between two answers by nature: the
// replay marker, the date and the lengths.
func visible(h http.Header, replayHeader string) http.Header {
	out := http.Header{}
	for k, vs := range h {
		switch http.CanonicalHeaderKey(k) {
		case http.CanonicalHeaderKey(replayHeader), "Date", "Content-Length", "Grpc-Status", "Grpc-Message":
			continue
		}
		out[http.CanonicalHeaderKey(k)] = vs
	}
	return out
}

var cases = []suiteCase{
	{"ReplaysResponse", func(t *testing.T, a Adapter) {
		for _, p := range a.Protocols {
			t.Run(p, func(t *testing.T) {
				t.Parallel()
				h, runs := counted(Charge)
				srv := start(t, a, h, memory.New())
				first := srv.Call(t.Context(), p, []string{"key-1"}, Request("acct"))
				require.Nil(t, first.Err)
				replay := srv.Call(t.Context(), p, []string{"key-1"}, Request("acct"))
				assert.Equal(t, int64(1), runs.Load(), "handler runs")
				SameAnswer(t, first, replay, idempotency.DefaultReplayHeader)
				assert.Equal(t, []string{"a", "b"}, replay.Header.Values("X-Multi"))
				assert.Equal(t, "caf\xe9", replay.Header.Get("X-Raw"), "bytes that are not UTF-8")
				assert.Equal(t, "done", replay.Trailer.Get("X-Charge-Trailer"), "a trailer stays a trailer")
				assert.Empty(t, replay.Header.Get("X-Charge-Trailer"), "a trailer stays a trailer")
			})
		}
	}},
	{"ReplaysErrors", func(t *testing.T, a Adapter) {
		detail := Detail{Type: "google.protobuf.Timestamp"}
		detail.Value, _ = proto.Marshal(timestamppb.New(time.Unix(42, 0)))
		for _, p := range a.Protocols {
			t.Run(p, func(t *testing.T) {
				t.Parallel()
				h, runs := counted(func(_ context.Context, _ *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error) {
					md.SetHeader("X-Reason", "funds")
					md.SetTrailer("X-Audit", "a1")
					return nil, &RPCError{Code: CodeFailedPrecondition, Message: "insufficient funds", Details: []Detail{detail}}
				})
				srv := start(t, a, h, memory.New())
				first := srv.Call(t.Context(), p, []string{"key-err"}, Request("acct"))
				require.NotNil(t, first.Err)
				assert.Equal(t, uint32(CodeFailedPrecondition), first.Err.Code, first.Err.Message)
				replay := srv.Call(t.Context(), p, []string{"key-err"}, Request("acct"))
				assert.Equal(t, int64(1), runs.Load(), "handler runs")
				SameAnswer(t, first, replay, idempotency.DefaultReplayHeader)
				assert.Equal(t, []Detail{detail}, replay.Err.Details)
				assert.Equal(t, "funds", replay.Meta("X-Reason"))
				assert.Equal(t, "a1", replay.Meta("X-Audit"))
			})
		}
	}},
	{"ErrorMessageBytes", func(t *testing.T, a Adapter) {
		// Without details: gRPC carries details in a protobuf Status, whose
		// message connect-go v1 cannot decode unless it is UTF-8.
		for _, p := range a.Protocols {
			t.Run(p, func(t *testing.T) {
				t.Parallel()
				h, runs := counted(func(context.Context, *paymentsv1.ChargeRequest, Metadata) (*paymentsv1.ChargeResponse, error) {
					return nil, &RPCError{Code: CodeFailedPrecondition, Message: "caf\xe9 \x00 100%"}
				})
				srv := start(t, a, h, memory.New())
				first := srv.Call(t.Context(), p, []string{"key-bytes"}, Request("acct"))
				require.NotNil(t, first.Err)
				// The Connect protocol's JSON turns the bytes into U+FFFD on
				// the first answer already; gRPC and in process keep them.
				// Either way the replay is what the first answer was.
				replay := srv.Call(t.Context(), p, []string{"key-bytes"}, Request("acct"))
				assert.Equal(t, int64(1), runs.Load(), "handler runs")
				SameAnswer(t, first, replay, idempotency.DefaultReplayHeader)
			})
		}
	}},
	{"PlainErrorsAsTheClientSawThem", func(t *testing.T, a Adapter) {
		p := a.Protocols[0]
		h, runs := counted(func(context.Context, *paymentsv1.ChargeRequest, Metadata) (*paymentsv1.ChargeResponse, error) {
			return nil, fmt.Errorf("disk full")
		})
		srv := start(t, a, h, memory.New())
		first := srv.Call(t.Context(), p, []string{"key-plain"}, Request("acct"))
		require.NotNil(t, first.Err)
		assert.Equal(t, uint32(CodeUnknown), first.Err.Code)
		replay := srv.Call(t.Context(), p, []string{"key-plain"}, Request("acct"))
		assert.Equal(t, int64(1), runs.Load(), "handler runs")
		SameAnswer(t, first, replay, idempotency.DefaultReplayHeader)
	}},
	{"EncodingsAreOneRequest", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, memory.New())
		for _, p := range a.Protocols {
			res := srv.Call(t.Context(), p, []string{"key-enc"}, Request("acct"))
			require.Nil(t, res.Err, p)
		}
		assert.Equal(t, int64(1), runs.Load(), "handler runs")
	}},
	{"Mismatch", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, memory.New())
		p := a.Protocols[0]
		require.Nil(t, srv.Call(t.Context(), p, []string{"key-m"}, Request("acct")).Err)
		res := srv.Call(t.Context(), p, []string{"key-m"}, Request("other"))
		require.NotNil(t, res.Err)
		assert.Equal(t, uint32(CodeInvalidArgument), res.Err.Code)
		assert.Equal(t, idempotency.StatusMismatch, res.Meta(idempotency.StatusHeader))
		assert.Equal(t, int64(1), runs.Load(), "handler runs")
	}},
	{"InFlight", func(t *testing.T, a Adapter) {
		for _, p := range a.Protocols {
			t.Run(p, func(t *testing.T) {
				t.Parallel()
				started, release := make(chan struct{}), make(chan struct{})
				h, runs := counted(func(ctx context.Context, req *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error) {
					close(started)
					<-release
					return Charge(ctx, req, md)
				})
				srv := start(t, a, h, memory.New(), idempotency.WithRetryAfter(2*time.Second))
				done := make(chan Result, 1)
				go func() { done <- srv.Call(context.WithoutCancel(t.Context()), p, []string{"key-f"}, Request("acct")) }()
				<-started
				res := srv.Call(t.Context(), p, []string{"key-f"}, Request("other payload"))
				close(release)
				require.NotNil(t, res.Err)
				assert.Equal(t, uint32(CodeAborted), res.Err.Code)
				assert.Equal(t, idempotency.StatusInFlight, res.Meta(idempotency.StatusHeader))
				assert.Equal(t, "2", res.Meta("Retry-After"))
				assert.Empty(t, res.Meta(idempotency.DefaultReplayHeader))
				assert.Nil(t, (<-done).Err)
				assert.Equal(t, int64(1), runs.Load(), "handler runs")
			})
		}
	}},
	{"Wait", func(t *testing.T, a Adapter) {
		started, release := make(chan struct{}), make(chan struct{})
		h, runs := counted(func(ctx context.Context, req *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error) {
			close(started)
			<-release
			return Charge(ctx, req, md)
		})
		srv := start(t, a, h, memory.New(), idempotency.WithWait(30*time.Second))
		p := a.Protocols[0]
		first := make(chan Result, 1)
		go func() { first <- srv.Call(t.Context(), p, []string{"key-w"}, Request("acct")) }()
		<-started
		second := make(chan Result, 1)
		go func() { second <- srv.Call(t.Context(), p, []string{"key-w"}, Request("acct")) }()
		close(release)
		f, s := <-first, <-second
		require.Nil(t, f.Err)
		require.Nil(t, s.Err)
		assert.Equal(t, int64(1), runs.Load(), "handler runs")
		SameAnswer(t, f, s, idempotency.DefaultReplayHeader)
	}},
	{"Panic", func(t *testing.T, a Adapter) {
		var once sync.Once
		h, runs := counted(func(ctx context.Context, req *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error) {
			panicked := false
			once.Do(func() { panicked = true })
			if panicked {
				panic("handler failed")
			}
			return Charge(ctx, req, md)
		})
		srv := start(t, a, h, memory.New())
		p := a.Protocols[0]
		res := srv.Call(t.Context(), p, []string{"key-p"}, Request("acct"))
		require.NotNil(t, res.Err, "a panic is an error")
		res = srv.Call(t.Context(), p, []string{"key-p"}, Request("acct"))
		require.Nil(t, res.Err, "the claim was released")
		assert.Empty(t, res.Meta(idempotency.DefaultReplayHeader))
		assert.Equal(t, int64(2), runs.Load(), "handler runs")
	}},
	{"ContextCanceled", func(t *testing.T, a Adapter) {
		started := make(chan struct{})
		var calls atomic.Int64
		h, runs := counted(func(ctx context.Context, req *paymentsv1.ChargeRequest, md Metadata) (*paymentsv1.ChargeResponse, error) {
			if calls.Add(1) == 1 {
				close(started)
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return Charge(ctx, req, md)
		})
		srv := start(t, a, h, memory.New())
		p := a.Protocols[0]
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan Result, 1)
		go func() { done <- srv.Call(ctx, p, []string{"key-c"}, Request("acct")) }()
		<-started
		cancel()
		require.NotNil(t, (<-done).Err)
		// The claim is released when the handler returns, which may be just
		// after the client saw its cancellation: retry until it is.
		var res Result
		require.Eventually(t, func() bool {
			res = srv.Call(t.Context(), p, []string{"key-c"}, Request("acct"))
			return res.Err == nil
		}, 10*time.Second, 5*time.Millisecond)
		assert.Empty(t, res.Meta(idempotency.DefaultReplayHeader), "not stored")
		assert.Equal(t, int64(2), runs.Load(), "handler runs")
	}},
	{"HostileKeys", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, memory.New())
		for _, p := range a.Protocols {
			for name, keys := range map[string][]string{
				"too long":   {strings.Repeat("k", 256)},
				"control":    {"bad\tkey"},
				"two values": {"a", "b"},
				"not utf-8":  {"caf\xe9"},
			} {
				res := srv.Call(t.Context(), p, keys, Request("acct"))
				require.NotNil(t, res.Err, "%s %s", p, name)
				assert.Equal(t, uint32(CodeInvalidArgument), res.Err.Code, "%s %s", p, name)
				assert.Equal(t, idempotency.StatusInvalidKey, res.Meta(idempotency.StatusHeader), "%s %s", p, name)
			}
		}
		assert.Zero(t, runs.Load(), "handler runs")
	}},
	{"KeyRequired", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, memory.New(), idempotency.WithRequireKey(true))
		res := srv.Call(t.Context(), a.Protocols[0], nil, Request("acct"))
		require.NotNil(t, res.Err)
		assert.Equal(t, uint32(CodeInvalidArgument), res.Err.Code)
		assert.Equal(t, idempotency.StatusInvalidKey, res.Meta(idempotency.StatusHeader))
		assert.Zero(t, runs.Load())
	}},
	{"NoKeyPassesThrough", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, failingStore{})
		for range 2 {
			res := srv.Call(t.Context(), a.Protocols[0], nil, Request("acct"))
			require.Nil(t, res.Err, "a call without a key never reaches the store")
		}
		assert.Equal(t, int64(2), runs.Load())
	}},
	{"StoreDown", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, failingStore{})
		res := srv.Call(t.Context(), a.Protocols[0], []string{"key-s"}, Request("acct"))
		require.NotNil(t, res.Err)
		assert.Equal(t, uint32(CodeUnavailable), res.Err.Code)
		assert.Equal(t, idempotency.StatusStoreUnavailable, res.Meta(idempotency.StatusHeader))
		assert.Zero(t, runs.Load())
	}},
	{"ProcedureFilter", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, failingStore{}, idempotency.WithProcedureFilter(func(string) bool { return false }))
		for range 2 {
			res := srv.Call(t.Context(), a.Protocols[0], []string{"key-pf"}, Request("acct"))
			require.Nil(t, res.Err, "an unguarded procedure never reaches the store")
			assert.Empty(t, res.Meta(idempotency.DefaultReplayHeader))
		}
		assert.Equal(t, int64(2), runs.Load())
	}},
	{"CorruptRecord", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		for name, record := range map[string]string{
			"not json":        "{not json",
			"bad code":        `{"v":1,"s":500,"e":{"c":99}}`,
			"no message":      `{"v":1,"s":200}`,
			"detail nameless": `{"v":1,"s":400,"e":{"c":3,"d":[{"t":"","v":""}]}}`,
		} {
			srv := start(t, a, h, completedStore(record))
			res := srv.Call(t.Context(), a.Protocols[0], []string{"key-cr"}, Request("acct"))
			require.NotNil(t, res.Err, name)
			assert.Equal(t, uint32(CodeUnavailable), res.Err.Code, name)
			assert.Equal(t, idempotency.StatusStoreUnavailable, res.Meta(idempotency.StatusHeader), name)
		}
		assert.Zero(t, runs.Load())
	}},
	{"ConcurrentDuplicates", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, memory.New())
		const n = 8
		results := make(chan Result, n)
		var wg sync.WaitGroup
		for i := range n {
			p := a.Protocols[i%len(a.Protocols)]
			wg.Go(func() { results <- srv.Call(t.Context(), p, []string{"key-cd"}, Request("acct")) })
		}
		wg.Wait()
		close(results)
		for res := range results {
			if res.Err != nil {
				assert.Equal(t, uint32(CodeAborted), res.Err.Code)
				assert.Equal(t, idempotency.StatusInFlight, res.Meta(idempotency.StatusHeader))
			}
		}
		assert.Equal(t, int64(1), runs.Load(), "handler runs")
	}},
	{"TooLargeNotStored", func(t *testing.T, a Adapter) {
		h, runs := counted(Charge)
		srv := start(t, a, h, memory.New(), idempotency.WithMaxResponseSize(16))
		for range 2 {
			res := srv.Call(t.Context(), a.Protocols[0], []string{"key-big"}, Request("acct"))
			require.Nil(t, res.Err, "the client gets its answer")
			assert.Empty(t, res.Meta(idempotency.DefaultReplayHeader))
		}
		assert.Equal(t, int64(2), runs.Load(), "not stored: the retry runs again")
	}},
	{"NotStoredUnavailable", func(t *testing.T, a Adapter) {
		h, runs := counted(func(context.Context, *paymentsv1.ChargeRequest, Metadata) (*paymentsv1.ChargeResponse, error) {
			return nil, &RPCError{Code: CodeUnavailable, Message: "try later"}
		})
		srv := start(t, a, h, memory.New())
		for range 2 {
			res := srv.Call(t.Context(), a.Protocols[0], []string{"key-u"}, Request("acct"))
			require.NotNil(t, res.Err)
			assert.Equal(t, uint32(CodeUnavailable), res.Err.Code)
			assert.Empty(t, res.Meta(idempotency.StatusHeader), "the handler's own answer")
		}
		assert.Equal(t, int64(2), runs.Load(), "Unavailable is not stored by default")
	}},
}

// completedStore answers every claim with record, as a completed key.
type completedStore string

func (s completedStore) Claim(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: []byte(s)}, nil
}
func (completedStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return idempotency.ErrNotHeld
}
func (completedStore) Release(context.Context, string, string) error { return idempotency.ErrNotHeld }
func (completedStore) Renew(context.Context, string, string, time.Duration) error {
	return idempotency.ErrNotHeld
}

// failingStore fails every call.
type failingStore struct{}

var errDown = fmt.Errorf("adaptertest: store down")

func (failingStore) Claim(context.Context, string, string, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, errDown
}
func (failingStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return errDown
}
func (failingStore) Release(context.Context, string, string) error { return errDown }
func (failingStore) Renew(context.Context, string, string, time.Duration) error {
	return errDown
}
