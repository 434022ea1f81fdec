package idempotency_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/store/memory"
)

// TestReplaysShareNothing checks SPEC §5.1: an outer interceptor that
// edits a replayed message (through Unwrap) and a replayed header's value
// in place, from many goroutines at once, never changes what another replay
// sends. Under -race, a shared message shows as a data race too.
func TestReplaysShareNothing(t *testing.T) {
	t.Parallel()
	outer := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			res, err := next(ctx, req)
			if err != nil || res.Header().Get(idempotency.DefaultReplayHeader) == "" {
				return res, err
			}
			msg := res.Any()
			if w, ok := msg.(interface{ Unwrap() proto.Message }); ok {
				msg = w.Unwrap()
			}
			lang := req.Header().Get("Accept-Language")
			charge := msg.(*paymentsv1.ChargeResponse)
			charge.Status = "localised-" + lang
			if vs := res.Header()["X-Charge-Id"]; len(vs) > 0 {
				vs[0] = "edited-" + lang
			}
			res.Header()[idempotency.DefaultReplayHeader][0] = "edited-" + lang
			return res, err
		}
	})
	svc := &paymentServer{charge: chargeHandler}
	client := startServer(t, svc, connect.WithInterceptors(outer, idempotency.NewInterceptor(memory.New(), quiet)))()
	first, err := client.Charge(t.Context(), chargeRequest("shared"))
	require.NoError(t, err)

	const callers = 16
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for n := range callers {
		wg.Go(func() {
			lang := strings.Repeat("x", n+1)
			req := chargeRequest("shared")
			req.Header().Set("Accept-Language", lang)
			res, err := client.Charge(t.Context(), req)
			switch {
			case err != nil:
				errs <- err
			case res.Msg.GetStatus() != "localised-"+lang:
				errs <- errors.New("caller " + lang + " got status " + res.Msg.GetStatus())
			case res.Header().Get("X-Charge-Id") != "edited-"+lang:
				errs <- errors.New("caller " + lang + " got header " + res.Header().Get("X-Charge-Id"))
			case res.Header().Get(idempotency.DefaultReplayHeader) != "edited-"+lang:
				errs <- errors.New("caller " + lang + " got marker " + res.Header().Get(idempotency.DefaultReplayHeader))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A replay without the outer interceptor's edits is the first answer.
	req := chargeRequest("shared")
	req.Header().Set("Accept-Language", "")
	res, err := client.Charge(t.Context(), req)
	require.NoError(t, err)
	assert.Equal(t, first.Msg.GetChargeId(), res.Msg.GetChargeId())
	assert.Equal(t, int64(1), svc.chargeRuns.Load())
}

// TestClientInterceptorLeavesTheRequestAlone checks SPEC §10: the key the
// client interceptor generates never lands in the caller's request, so one
// request object sent twice is two calls.
func TestClientInterceptorLeavesTheRequestAlone(t *testing.T) {
	t.Parallel()
	svc := &paymentServer{charge: chargeHandler}
	client := guarded(t, svc, memory.New())(connect.WithInterceptors(idempotency.NewClientInterceptor()))
	req := chargeRequest("")
	first, err := client.Charge(t.Context(), req)
	require.NoError(t, err)
	assert.Empty(t, req.Header().Get(idempotency.DefaultIdempotencyHeader), "the key was written into the caller's request")
	second, err := client.Charge(t.Context(), req)
	require.NoError(t, err)
	assert.Empty(t, second.Header().Get(idempotency.DefaultReplayHeader), "the second call was answered as a replay")
	assert.NotEqual(t, first.Msg.GetChargeId(), second.Msg.GetChargeId())
	assert.Equal(t, int64(2), svc.chargeRuns.Load())
}

// blockingStore's Claim waits for its context to end and returns its
// error, as a networked store does when the request is cancelled.
type blockingStore struct {
	idempotency.Store
	entered chan struct{}
}

func (s *blockingStore) Claim(ctx context.Context, _, _ string, _ time.Duration) (idempotency.ClaimResult, error) {
	close(s.entered)
	<-ctx.Done()
	return idempotency.ClaimResult{}, ctx.Err()
}

// TestCancelledClaimIsNotAnOutage checks SPEC §6.1: a request whose own
// context ends while claiming gets its context's error, even under
// fail-open the handler does not run, and nothing is logged as an outage.
func TestCancelledClaimIsNotAnOutage(t *testing.T) {
	t.Parallel()
	for _, failOpen := range []bool{false, true} {
		t.Run(map[bool]string{false: "fail closed", true: "fail open"}[failOpen], func(t *testing.T) {
			t.Parallel()
			var logs logSink
			store := &blockingStore{Store: memory.New(), entered: make(chan struct{})}
			var runs atomic.Int64
			handler := connect.NewUnaryHandler("/idemkey.payments.v1.PaymentService/Charge",
				func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
					runs.Add(1)
					return connect.NewResponse(&paymentsv1.ChargeResponse{}), nil
				},
				connect.WithInterceptors(idempotency.NewInterceptor(store, logs.option(), idempotency.WithFailOpen(failOpen))))
			ctx, cancel := context.WithCancel(t.Context())
			go func() {
				<-store.entered
				cancel()
			}()
			_, err := callInProcess(ctx, handler, chargeRequest("k"))
			require.Error(t, err)
			assert.Equal(t, connect.CodeCanceled, connect.CodeOf(err), "%v", err)
			assert.Zero(t, runs.Load(), "the handler ran")
			assert.NotContains(t, logs.String(), "store unavailable")
			assert.NotContains(t, logs.String(), "level=ERROR")
		})
	}
}

// callInProcess calls a unary handler through a real client over an
// in-memory HTTP server.
func callInProcess(ctx context.Context, handler http.Handler, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	srv := newLocalServer(handler)
	defer srv.Close()
	client := connect.NewClient[paymentsv1.ChargeRequest, paymentsv1.ChargeResponse](srv.Client(), srv.URL+"/idemkey.payments.v1.PaymentService/Charge")
	return client.CallUnary(ctx, req)
}

// TestDefaultPolicyDoesNotStoreTryLater checks SPEC §4.6: by default an
// answer that means "not processed, try again later" is not stored, and
// the retry runs; other errors are.
func TestDefaultPolicyDoesNotStoreTryLater(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		code     connect.Code
		wantRuns int64
	}{
		{connect.CodeUnavailable, 2},
		{connect.CodeResourceExhausted, 2},
		{connect.CodeInternal, 1},
		{connect.CodeFailedPrecondition, 1},
	} {
		t.Run(tt.code.String(), func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				return nil, connect.NewError(tt.code, errors.New("no"))
			}}
			client := guarded(t, svc, memory.New())()
			for range 2 {
				_, err := client.Charge(t.Context(), chargeRequest("k"))
				assert.Equal(t, tt.code, connect.CodeOf(err))
			}
			assert.Equal(t, tt.wantRuns, svc.chargeRuns.Load())
		})
	}
}

// TestErrorHeadersStayHeaders checks SPEC §5.1 on every protocol: a header
// set through the call info before an error returns is a header on the
// replay too, a trailer stays a trailer, and the error's own metadata comes
// back as the first answer had it; values that are not UTF-8 come back
// byte for byte.
func TestErrorHeadersStayHeaders(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			svc := &paymentServer{charge: func(ctx context.Context, _ *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
				info, _ := connect.CallInfoForHandlerContext(ctx)
				info.ResponseHeader().Set("X-Info-Header", "h\xff1")
				info.ResponseTrailer().Set("X-Info-Trailer", "t1")
				ce := connect.NewError(connect.CodeFailedPrecondition, errors.New("card declined \xfe"))
				ce.Meta().Set("X-Error-Meta", "m\xc31")
				return nil, ce
			}}
			client := guarded(t, svc, memory.New())(p.opts...)
			type view struct {
				header, trailer http.Header
				message         string
			}
			call := func() view {
				ctx, info := connect.NewClientContext(t.Context())
				_, err := client.Charge(ctx, chargeRequest("k"))
				var ce *connect.Error
				require.ErrorAs(t, err, &ce)
				return view{header: info.ResponseHeader().Clone(), trailer: info.ResponseTrailer().Clone(), message: ce.Message()}
			}
			first, retry := call(), call()
			assert.Equal(t, int64(1), svc.chargeRuns.Load())
			assert.Equal(t, first.message, retry.message)
			for _, name := range []string{"X-Info-Header", "X-Info-Trailer", "X-Error-Meta"} {
				assert.Equal(t, first.header.Values(name), retry.header.Values(name), "%s in the headers", name)
				assert.Equal(t, first.trailer.Values(name), retry.trailer.Values(name), "%s in the trailers", name)
			}
			assert.Equal(t, []string{"h\xff1"}, retry.header.Values("X-Info-Header"))
		})
	}
}

// TestReplayThroughRuntimeSchema checks SPEC §5.1: a handler over dynamicpb
// with a schema loaded at run time, whose types are in no registry, is
// replayed through the procedure's schema.
func TestReplayThroughRuntimeSchema(t *testing.T) {
	t.Parallel()
	method := runtimeMethod(t)
	var runs atomic.Int64
	procedure := "/" + string(method.Parent().FullName()) + "/" + string(method.Name())
	handler := connect.NewUnaryHandler(procedure,
		func(_ context.Context, req *connect.Request[dynamicpb.Message]) (*connect.Response[dynamicpb.Message], error) {
			n := runs.Add(1)
			out := dynamicpb.NewMessage(method.Output())
			out.Set(method.Output().Fields().ByName("id"), protoreflect.ValueOfString("run-"+string(rune('0'+n))))
			return connect.NewResponse(out), nil
		},
		connect.WithSchema(method),
		connect.WithRequestInitializer(func(_ connect.Spec, msg any) error {
			*msg.(*dynamicpb.Message) = *dynamicpb.NewMessage(method.Input())
			return nil
		}),
		connect.WithInterceptors(idempotency.NewInterceptor(memory.New(), quiet)))
	srv := newLocalServer(handler)
	defer srv.Close()
	for _, p := range protocols {
		client := connect.NewClient[dynamicpb.Message, dynamicpb.Message](srv.Client(), srv.URL+procedure,
			append([]connect.ClientOption{
				connect.WithSchema(method),
				connect.WithResponseInitializer(func(_ connect.Spec, msg any) error {
					*msg.(*dynamicpb.Message) = *dynamicpb.NewMessage(method.Output())
					return nil
				}),
			}, p.opts...)...)
		req := connect.NewRequest(dynamicpb.NewMessage(method.Input()))
		req.Header().Set(idempotency.DefaultIdempotencyHeader, "dyn")
		res, err := client.CallUnary(t.Context(), req)
		require.NoError(t, err, p.name)
		assert.Equal(t, "run-1", res.Msg.Get(method.Output().Fields().ByName("id")).String(), p.name)
	}
	assert.Equal(t, int64(1), runs.Load())
}

// runtimeMethod builds a service at run time, in no registry.
func runtimeMethod(t *testing.T) protoreflect.MethodDescriptor {
	t.Helper()
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:    proto.String("runtime/v1/runtime.proto"),
		Package: proto.String("runtime.v1"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("CreateRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				{Name: proto.String("name"), Number: proto.Int32(1), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), JsonName: proto.String("name")},
			}},
			{Name: proto.String("CreateResponse"), Field: []*descriptorpb.FieldDescriptorProto{
				{Name: proto.String("id"), Number: proto.Int32(1), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), JsonName: proto.String("id")},
			}},
		},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("RuntimeService"),
			Method: []*descriptorpb.MethodDescriptorProto{{
				Name: proto.String("Create"), InputType: proto.String(".runtime.v1.CreateRequest"), OutputType: proto.String(".runtime.v1.CreateResponse"),
			}},
		}},
	}, nil)
	require.NoError(t, err)
	return fd.Services().Get(0).Methods().Get(0)
}

// newLocalServer serves handler over HTTP/1.1 and HTTP/2 with TLS.
func newLocalServer(handler http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(handler)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	return srv
}
