package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/memory"
)

// runClientDemo shows the client half: a Connect client with the client
// interceptor whose first answer is lost on the way back. The interceptor
// retries with the same key, and the server replays the first execution's
// result instead of charging twice.
func runClientDemo(w io.Writer, logger *slog.Logger) error {
	store := memory.New()
	defer store.Close()
	svc := &payments{}
	mux := http.NewServeMux()
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(svc,
		connect.WithInterceptors(idempotency.NewInterceptor(store, idempotency.WithLogger(logger))),
	))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	transport := &losingTransport{base: http.DefaultTransport, w: w}
	transport.lose.Store(1)
	client := paymentsv1connect.NewPaymentServiceClient(&http.Client{Transport: transport}, "http://"+ln.Addr().String(),
		connect.WithInterceptors(idempotency.NewClientInterceptor()),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fmt.Fprintln(w, "Charging 15.00 EUR with the client interceptor; the network loses the first answer.")
	res, err := client.Charge(ctx, connect.NewRequest(&paymentsv1.ChargeRequest{
		AccountId: "acct_1", AmountCents: 1500, Currency: "EUR",
	}))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Got charge %s (replayed: %s); the handler ran %d time(s).\n",
		res.Msg.GetChargeId(), res.Header().Get(idempotency.DefaultReplayHeader), svc.charges.Load())
	return nil
}

// losingTransport lets requests reach the server but drops the answers of
// the first few, as a connection that breaks after the server answered.
type losingTransport struct {
	base http.RoundTripper
	w    io.Writer
	lose atomic.Int64
}

func (t *losingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	key := r.Header.Get(idempotency.DefaultIdempotencyHeader)
	res, err := t.base.RoundTrip(r)
	if err == nil && t.lose.Add(-1) >= 0 {
		_, _ = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
		fmt.Fprintf(t.w, "  attempt with Idempotency-Key %s: the server answered, but the answer was lost\n", key)
		return nil, errors.New("connection reset by peer")
	}
	if err == nil {
		fmt.Fprintf(t.w, "  attempt with Idempotency-Key %s: answered\n", key)
	}
	return res, err
}
