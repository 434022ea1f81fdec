package httpmw_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
)

// paymentServer is a pluggable PaymentService: each RPC runs its function
// field. An RPC without a function answers CodeUnimplemented.
type paymentServer struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler

	charge func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error)
	watch  func(context.Context, *connect.Request[paymentsv1.WatchChargesRequest], *connect.ServerStream[paymentsv1.WatchChargesResponse]) error

	chargeRuns atomic.Int32
}

func (s *paymentServer) Charge(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	s.chargeRuns.Add(1)
	if s.charge == nil {
		return s.UnimplementedPaymentServiceHandler.Charge(ctx, req)
	}
	return s.charge(ctx, req)
}

func (s *paymentServer) WatchCharges(ctx context.Context, req *connect.Request[paymentsv1.WatchChargesRequest], stream *connect.ServerStream[paymentsv1.WatchChargesResponse]) error {
	if s.watch == nil {
		return s.UnimplementedPaymentServiceHandler.WatchCharges(ctx, req, stream)
	}
	return s.watch(ctx, req, stream)
}

// charged answers every charge with an ID made of its amount.
func charged(_ context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	return connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch", AmountCents: req.Msg.GetAmountCents()}), nil
}

// startRPC serves svc behind the middleware over store, on HTTP/1.1 and
// HTTP/2 with TLS, and counts the requests that reach the middleware.
func startRPC(t *testing.T, svc *paymentServer, store idempotency.Store, opts ...idempotency.Option) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc))
	var requests atomic.Int32
	mw := httpmw.New(store, append([]idempotency.Option{quiet}, opts...)...)(mux)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		mw.ServeHTTP(w, r)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, &requests
}

var quiet = idempotency.WithLogger(slog.New(slog.DiscardHandler))

var rpcProtocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{name: "connect+json", opts: []connect.ClientOption{connect.WithProtoJSON()}},
	{name: "connect+proto"},
	{name: "grpc", opts: []connect.ClientOption{connect.WithGRPC()}},
	{name: "grpc-web", opts: []connect.ClientOption{connect.WithGRPCWeb()}},
}

func charge(ctx context.Context, client paymentsv1connect.PaymentServiceClient, key string, amount int64) (*connect.Response[paymentsv1.ChargeResponse], error) {
	req := connect.NewRequest(&paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: amount})
	if key != "" {
		req.Header().Set(idempotency.DefaultIdempotencyHeader, key)
	}
	return client.Charge(ctx, req)
}

// requireLibraryError checks that err is the library's error in the
// client's protocol: a wire error with code and, in its metadata, the
// Idempotency-Status label, as the client interceptor reads them.
func requireLibraryError(t *testing.T, err error, code connect.Code, label, message string) *connect.Error {
	t.Helper()
	var ce *connect.Error
	require.ErrorAs(t, err, &ce)
	require.Equal(t, code, ce.Code(), "error: %v", err)
	assert.True(t, connect.IsWireError(ce))
	assert.Equal(t, label, ce.Meta().Get(idempotency.StatusHeader))
	assert.Contains(t, ce.Message(), message)
	return ce
}

// TestRPCErrors checks SPEC §7: behind the middleware, a Connect handler's
// clients get the middleware's errors in their own protocol (Connect with
// JSON and binary, gRPC, gRPC-Web), with the interceptor's codes and the
// Idempotency-Status metadata, and Retry-After when the key is in flight.
func TestRPCErrors(t *testing.T) {
	t.Parallel()
	for _, p := range rpcProtocols {
		t.Run(p.name+"/mismatch", func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: charged}
			srv, _ := startRPC(t, svc, newSpy())
			// Only the Connect JSON answer is a JSON body the middleware
			// stores; the other protocols' requests then differ from it.
			jsonClient := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, connect.WithProtoJSON())
			_, err := charge(t.Context(), jsonClient, "mismatch-key", 100)
			require.NoError(t, err)

			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, p.opts...)
			_, err = charge(t.Context(), client, "mismatch-key", 200)
			_ = requireLibraryError(t, err, connect.CodeInvalidArgument, idempotency.StatusMismatch, "different request")
			assert.Equal(t, int32(1), svc.chargeRuns.Load())
		})
		t.Run(p.name+"/in flight", func(t *testing.T) {
			t.Parallel()
			started, release := make(chan struct{}), make(chan struct{})
			svc := &paymentServer{charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				close(started)
				<-release
				return charged(ctx, req)
			}}
			srv, _ := startRPC(t, svc, newSpy(), idempotency.WithRetryAfter(3*time.Second))
			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, p.opts...)
			errc := make(chan error, 1)
			go func() {
				_, err := charge(t.Context(), client, "busy-key", 100)
				errc <- err
			}()
			<-started
			_, err := charge(t.Context(), client, "busy-key", 100)
			ce := requireLibraryError(t, err, connect.CodeAborted, idempotency.StatusInFlight, "still being processed")
			assert.Equal(t, "3", ce.Meta().Get("Retry-After"))
			close(release)
			require.NoError(t, <-errc)
		})
		t.Run(p.name+"/invalid key", func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: charged}
			srv, _ := startRPC(t, svc, newSpy())
			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, p.opts...)
			_, err := charge(t.Context(), client, strings.Repeat("k", 256), 100)
			_ = requireLibraryError(t, err, connect.CodeInvalidArgument, idempotency.StatusInvalidKey, "Idempotency-Key header is invalid")
			assert.Zero(t, svc.chargeRuns.Load())
		})
		t.Run(p.name+"/key required", func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: charged}
			srv, _ := startRPC(t, svc, newSpy(), idempotency.WithRequireKey(true))
			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, p.opts...)
			_, err := charge(t.Context(), client, "", 100)
			_ = requireLibraryError(t, err, connect.CodeInvalidArgument, idempotency.StatusInvalidKey, "needs an idempotency key")
			assert.Zero(t, svc.chargeRuns.Load())
		})
		t.Run(p.name+"/store unavailable", func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: charged}
			srv, _ := startRPC(t, svc, &failingStore{})
			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, p.opts...)
			_, err := charge(t.Context(), client, "down-key", 100)
			_ = requireLibraryError(t, err, connect.CodeUnavailable, idempotency.StatusStoreUnavailable, "store cannot be reached")
			assert.Zero(t, svc.chargeRuns.Load())
		})
	}
}

// TestRPCErrorsDriveClientRetries checks that the client interceptor
// recognises the middleware's errors on every protocol: it retries while
// the key is in flight or the store is down, and never after a mismatch.
func TestRPCErrorsDriveClientRetries(t *testing.T) {
	t.Parallel()
	retrying := connect.WithInterceptors(idempotency.NewClientInterceptor(
		idempotency.WithMaxRetries(2), idempotency.WithBackoff(time.Millisecond, time.Millisecond)))
	for _, p := range rpcProtocols {
		t.Run(p.name+"/store unavailable", func(t *testing.T) {
			t.Parallel()
			srv, requests := startRPC(t, &paymentServer{charge: charged}, &failingStore{})
			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, append(p.opts, retrying)...)
			_, err := charge(t.Context(), client, "down-key", 100)
			_ = requireLibraryError(t, err, connect.CodeUnavailable, idempotency.StatusStoreUnavailable, "")
			assert.Equal(t, int32(3), requests.Load(), "the first try and two retries")
		})
		t.Run(p.name+"/in flight", func(t *testing.T) {
			t.Parallel()
			started, release := make(chan struct{}), make(chan struct{})
			svc := &paymentServer{charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				close(started)
				<-release
				return charged(ctx, req)
			}}
			srv, requests := startRPC(t, svc, newSpy())
			plain := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, p.opts...)
			errc := make(chan error, 1)
			go func() {
				_, err := charge(t.Context(), plain, "busy-key", 100)
				errc <- err
			}()
			<-started
			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, append(p.opts, retrying)...)
			_, err := charge(t.Context(), client, "busy-key", 100)
			_ = requireLibraryError(t, err, connect.CodeAborted, idempotency.StatusInFlight, "")
			assert.Equal(t, int32(1+3), requests.Load(), "the first request, then a try and two retries")
			close(release)
			require.NoError(t, <-errc)
		})
		t.Run(p.name+"/mismatch", func(t *testing.T) {
			t.Parallel()
			srv, requests := startRPC(t, &paymentServer{charge: charged}, newSpy())
			jsonClient := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, connect.WithProtoJSON())
			_, err := charge(t.Context(), jsonClient, "mismatch-key", 100)
			require.NoError(t, err)
			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, append(p.opts, retrying)...)
			_, err = charge(t.Context(), client, "mismatch-key", 200)
			_ = requireLibraryError(t, err, connect.CodeInvalidArgument, idempotency.StatusMismatch, "")
			assert.Equal(t, int32(2), requests.Load(), "no retry")
		})
	}
}

// TestRPCRequestsAreToldApart checks which requests get the middleware's
// errors in an RPC protocol: a REST client posting JSON keeps its problem
// document; only a Connect client, which sends Connect-Protocol-Version,
// and gRPC and gRPC-Web clients, known by their content types, do not.
func TestRPCRequestsAreToldApart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		method      string
		contentType string
		connect     bool // sends Connect-Protocol-Version: 1
		wantStatus  int
		wantType    string
	}{
		{name: "REST JSON", method: http.MethodPost, contentType: "application/json", wantStatus: 422, wantType: "application/problem+json"},
		{name: "REST JSON with charset", method: http.MethodPost, contentType: "application/json; charset=utf-8", wantStatus: 422, wantType: "application/problem+json"},
		{name: "REST protobuf", method: http.MethodPost, contentType: "application/proto", wantStatus: 422, wantType: "application/problem+json"},
		{name: "REST form", method: http.MethodPost, contentType: "application/x-www-form-urlencoded", wantStatus: 422, wantType: "application/problem+json"},
		{name: "no content type", method: http.MethodPost, wantStatus: 422, wantType: "application/problem+json"},
		{name: "Connect JSON", method: http.MethodPost, contentType: "application/json", connect: true, wantStatus: 400, wantType: "application/json"},
		{name: "Connect proto", method: http.MethodPost, contentType: "application/proto", connect: true, wantStatus: 400, wantType: "application/json"},
		{name: "Connect PATCH", method: http.MethodPatch, contentType: "application/json", connect: true, wantStatus: 422, wantType: "application/problem+json"},
		{name: "gRPC", method: http.MethodPost, contentType: "application/grpc", wantStatus: 200, wantType: "application/grpc"},
		{name: "gRPC proto", method: http.MethodPost, contentType: "application/grpc+proto", wantStatus: 200, wantType: "application/grpc+proto"},
		{name: "gRPC-Web", method: http.MethodPost, contentType: "application/grpc-web+proto", wantStatus: 200, wantType: "application/grpc-web+proto"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var runs atomic.Int32
			h := guarded(newSpy(), counted(&runs, jsonHandler(http.StatusOK, `{}`)))
			r := httptest.NewRequestWithContext(t.Context(), tt.method, "/payments", strings.NewReader(`{}`))
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			if tt.connect {
				r.Header.Set("Connect-Protocol-Version", "1")
			}
			r.Header.Set(idempotency.DefaultIdempotencyHeader, strings.Repeat("k", 256))
			rec := serve(h, r)
			assert.Equal(t, tt.wantStatus, rec.Code)
			assert.Equal(t, tt.wantType, rec.Header().Get("Content-Type"))
			assert.Equal(t, idempotency.StatusInvalidKey, rec.Result().Header.Get(idempotency.StatusHeader)+
				rec.Result().Trailer.Get(idempotency.StatusHeader))
			assert.Zero(t, runs.Load())
		})
	}
}

// TestRPCResponsesAreNotStored checks what the middleware does with the
// responses of gRPC, gRPC-Web and Connect streaming requests: it streams
// them through as the handler writes them, stores nothing (a retry runs
// the handler again), releases the claim, and says so in its log.
func TestRPCResponsesAreNotStored(t *testing.T) {
	t.Parallel()
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			received := make(chan struct{})
			svc := &paymentServer{
				charge: charged,
				watch: func(_ context.Context, _ *connect.Request[paymentsv1.WatchChargesRequest], stream *connect.ServerStream[paymentsv1.WatchChargesResponse]) error {
					if err := stream.Send(&paymentsv1.WatchChargesResponse{Charge: &paymentsv1.ChargeResponse{ChargeId: "ch_1"}}); err != nil {
						return err
					}
					// Held back until the handler returns, the message would
					// never arrive.
					select {
					case <-received:
						return nil
					case <-time.After(10 * time.Second):
						return connect.NewError(connect.CodeDeadlineExceeded, errors.New("the message was not received"))
					}
				},
			}
			var logs syncBuffer
			spy := newSpy()
			srv, _ := startRPC(t, svc, spy, idempotency.WithLogger(bufferLogger(&logs)))
			client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, p.opts...)

			req := connect.NewRequest(&paymentsv1.WatchChargesRequest{AccountId: "acct_1"})
			req.Header().Set(idempotency.DefaultIdempotencyHeader, "watch-key")
			stream, err := client.WatchCharges(t.Context(), req)
			require.NoError(t, err)
			require.True(t, stream.Receive(), "first message: %v", stream.Err())
			assert.Equal(t, "ch_1", stream.Msg().GetCharge().GetChargeId())
			close(received)
			assert.False(t, stream.Receive())
			require.NoError(t, stream.Err())
			require.NoError(t, stream.Close())
			assert.Equal(t, "release", spy.waitEnded(t))

			for range 2 {
				res, err := charge(t.Context(), client, "unary-key", 100)
				require.NoError(t, err)
				assert.Equal(t, int64(100), res.Msg.GetAmountCents())
			}
			out := logs.String()
			assert.NotContains(t, out, "watch-key")
			assert.NotContains(t, out, "unary-key")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			const rpcReason = "reason=rpc-protocol"
			assert.Contains(t, lines[0], rpcReason)
			// Mounted outside a ServeMux, httpmw names the route by its
			// method alone, as metrics do: never a path with values in it.
			assert.Contains(t, lines[0], "route=POST ")
			switch p.name {
			case "connect+json":
				assert.Equal(t, int32(1), svc.chargeRuns.Load(), "a Connect JSON answer is stored")
				assert.Len(t, lines, 1, out)
				return
			case "connect+proto":
				require.Len(t, lines, 2, "one line for each route, not each request: %s", out)
				assert.Contains(t, lines[1], "reason=not-json")
				assert.Contains(t, lines[1], "route=POST ")
			default:
				// Both procedures are the route POST, with one reason: one
				// line, not one for each request.
				require.Len(t, lines, 1, out)
			}
			assert.Equal(t, int32(2), svc.chargeRuns.Load(), "the handler ran for the retry")
			assert.Zero(t, spy.completes.Load())
		})
	}
}

// TestRPCStreamIsNotReadAhead checks that the middleware does not read a
// gRPC request's body before the handler runs: a bidirectional stream whose
// client waits for an answer before it ends its side would never start.
func TestRPCStreamIsNotReadAhead(t *testing.T) {
	t.Parallel()
	spy := newSpy()
	srv := httptest.NewUnstartedServer(guarded(spy, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := make([]byte, 5)
		if _, err := io.ReadFull(r.Body, first); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/grpc")
		_, _ = w.Write(first)
		_ = http.NewResponseController(w).Flush() // the client's read tells
		_, _ = io.Copy(io.Discard, r.Body)
	}), quiet))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/pkg.Service/Chat", pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set(idempotency.DefaultIdempotencyHeader, "chat-key")
	go func() { _, _ = pw.Write([]byte{0, 0, 0, 0, 0}) }()
	res, err := srv.Client().Do(req)
	require.NoError(t, err, "the handler did not answer before the client ended its side")
	defer res.Body.Close()
	got := make([]byte, 5)
	_, err = io.ReadFull(res.Body, got)
	require.NoError(t, err)
	assert.Equal(t, []byte{0, 0, 0, 0, 0}, got)
	require.NoError(t, pw.Close())
	_, err = io.Copy(io.Discard, res.Body)
	require.NoError(t, err)
	assert.Equal(t, "release", spy.waitEnded(t))
}

// TestRPCStreamNeverGetsARecord checks that a gRPC request whose key has a
// record, stored for a Connect JSON request, is answered as a mismatch even
// without fingerprints: the record's JSON means nothing to a gRPC client.
func TestRPCStreamNeverGetsARecord(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{charge: charged}
	srv, _ := startRPC(t, svc, newSpy(), idempotency.WithoutFingerprint())
	jsonClient := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, connect.WithProtoJSON())
	_, err := charge(t.Context(), jsonClient, "shared-key", 100)
	require.NoError(t, err)
	for _, opt := range []connect.ClientOption{connect.WithGRPC(), connect.WithGRPCWeb()} {
		client := paymentsv1connect.NewPaymentServiceClient(srv.Client(), srv.URL, opt)
		_, err = charge(t.Context(), client, "shared-key", 100)
		_ = requireLibraryError(t, err, connect.CodeInvalidArgument, idempotency.StatusMismatch, "different request")
	}
	assert.Equal(t, int32(1), svc.chargeRuns.Load())
}
