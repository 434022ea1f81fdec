package hostile

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/grpcmw"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
)

// grpcPayments renders a row's answer for grpc-go.
type grpcPayments struct {
	paymentsv1.UnimplementedPaymentServiceServer
	e *rowEnv
	a answer
}

// keyHeader gives a call's key metadata in the form rowEnv.begin reads.
func keyHeader(ctx context.Context) http.Header {
	md, _ := metadata.FromIncomingContext(ctx)
	h := http.Header{}
	if vs := md.Get("idempotency-key"); vs != nil {
		h[idempotency.DefaultIdempotencyHeader] = vs
	}
	return h
}

func (p *grpcPayments) Charge(ctx context.Context, req *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	run, giveUp := p.e.begin(ctx, p.a, keyHeader(ctx))
	if giveUp {
		return nil, ctx.Err()
	}
	msg := &paymentsv1.ChargeResponse{ChargeId: "ch_" + strconv.Itoa(run), Status: "succeeded", AmountCents: req.GetAmountCents()}
	if p.a == answerNoContent {
		msg = &paymentsv1.ChargeResponse{}
	}
	if p.a == answerHeaderTwice {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-twice", "first"))
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-twice", "second"))
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-run", strconv.Itoa(run)))
	return msg, nil
}

func (p *grpcPayments) GetCharge(ctx context.Context, req *paymentsv1.GetChargeRequest) (*paymentsv1.GetChargeResponse, error) {
	run, _ := p.e.begin(ctx, p.a, keyHeader(ctx))
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-run", strconv.Itoa(run)))
	return &paymentsv1.GetChargeResponse{Charge: &paymentsv1.ChargeResponse{ChargeId: req.GetChargeId()}}, nil
}

// grpcReply is what a grpc-go client got.
type grpcReply struct {
	msg    proto.Message
	header metadata.MD
	err    error
}

// sendable reports whether grpc-go sends keys as metadata: it refuses
// values that are not printable ASCII.
func sendable(keys []string) bool {
	for _, k := range keys {
		for i := range len(k) {
			if k[i] < 0x20 || k[i] > 0x7e {
				return false
			}
		}
	}
	return true
}

// headerStream is the transport stream of a call made to the interceptor
// directly: it keeps the header metadata.
type headerStream struct {
	mu     sync.Mutex
	header metadata.MD
}

func (s *headerStream) Method() string { return paymentsv1.PaymentService_Charge_FullMethodName }
func (s *headerStream) SetHeader(md metadata.MD) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.header = metadata.Join(s.header, md)
	return nil
}
func (s *headerStream) SendHeader(md metadata.MD) error { return s.SetHeader(md) }
func (s *headerStream) SetTrailer(metadata.MD) error    { return nil }

func runGRPCRow(t *testing.T, tt row) {
	e := newRowEnv(t)
	svc := &grpcPayments{e: e, a: tt.answer}
	intercept := grpcmw.UnaryServerInterceptor(e.store, idempotency.WithLogger(quiet))
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(intercept))
	paymentsv1.RegisterPaymentServiceServer(s, svc)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	client := paymentsv1.NewPaymentServiceClient(cc)

	call := func(ctx context.Context, keys []string) grpcReply {
		var r grpcReply
		if !sendable(keys) {
			// grpc-go will not send these keys; a proxy or another client
			// may, so the interceptor gets them as incoming metadata.
			t.Log("grpc-go refuses to send the key: calling the interceptor directly")
			hs := &headerStream{}
			ctx = grpc.NewContextWithServerTransportStream(
				metadata.NewIncomingContext(ctx, metadata.MD{"idempotency-key": keys}), hs)
			info := &grpc.UnaryServerInfo{FullMethod: paymentsv1.PaymentService_Charge_FullMethodName}
			res, err := intercept(ctx, &paymentsv1.ChargeRequest{AmountCents: 100}, info, func(ctx context.Context, req any) (any, error) {
				return svc.Charge(ctx, req.(*paymentsv1.ChargeRequest))
			})
			if err == nil {
				r.msg = res.(proto.Message)
			}
			r.err, r.header = err, hs.header
			return r
		}
		if keys != nil {
			ctx = metadata.NewOutgoingContext(ctx, metadata.MD{"idempotency-key": keys})
		}
		if tt.method == http.MethodGet {
			r.msg, r.err = client.GetCharge(ctx, &paymentsv1.GetChargeRequest{ChargeId: "ch_1"}, grpc.Header(&r.header))
		} else {
			r.msg, r.err = client.Charge(ctx, &paymentsv1.ChargeRequest{AmountCents: 100}, grpc.Header(&r.header))
		}
		return r
	}

	var first grpcReply
	e.send(t, tt.disconnect, func(ctx context.Context) error {
		first = call(ctx, tt.keys)
		return nil
	})
	checkGRPC(t, "first request", first, tt.want)
	if tt.tamper != nil {
		e.tamperStored(t, tt.tamper)
	}
	retryKeys := tt.retryKeys
	if retryKeys == nil {
		retryKeys = tt.keys
	}
	retry := call(t.Context(), retryKeys)
	checkGRPC(t, "retry", retry, tt.wantRetry)
	if tt.wantRetry.replayed && !tt.want.gone && first.err == nil && retry.err == nil {
		assert.True(t, proto.Equal(first.msg, retry.msg), "replayed %v, first %v", retry.msg, first.msg)
		for _, h := range []string{"x-run", "x-twice"} {
			assert.Equal(t, first.header.Get(h), retry.header.Get(h), "replayed header %s", h)
		}
	}
	if tt.want.gone && tt.wantRetry.replayed && retry.err == nil {
		assert.Equal(t, "ch_1", retry.msg.(*paymentsv1.ChargeResponse).GetChargeId(), "the retry gets the work that finished without its client")
	}
	e.checkEnd(t, tt)
}

func checkGRPC(t *testing.T, which string, got grpcReply, want outcome) {
	t.Helper()
	switch {
	case want.gone:
		assert.Error(t, got.err, "%s: the client went away, yet got an answer", which)
	case want.code != 0:
		assert.Equal(t, codes.Code(want.code), status.Code(got.err), "%s: code (%v)", which, got.err)
		assert.Equal(t, want.label, first(got.header.Get("idempotency-status")), "%s: idempotency-status", which)
	default:
		require.NoError(t, got.err, which)
		assert.Equal(t, want.replayed, first(got.header.Get("idempotent-replayed")) == "true", "%s: replayed", which)
	}
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}
