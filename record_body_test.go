package idempotency

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
)

// TestRecordResponseBody checks the body that the interceptor records, on
// both of its encoders: protojson decodes it into the response; a response
// that protojson rejects is not stored, and the size limit still applies.
func TestRecordResponseBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		res      connect.AnyResponse
		maxSize  int64
		wantBody string // empty when nothing is stored
		wantLog  string
	}{
		{
			name:     "fast encoder",
			res:      connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250}),
			wantBody: `{"chargeId":"ch_1","status":"succeeded","amountCents":"1250"}`,
		},
		{
			name:     "protojson for a well-known type",
			res:      connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch_1", CreatedAt: &timestamppb.Timestamp{Seconds: 1}}),
			wantBody: `{"chargeId":"ch_1","createdAt":"1970-01-01T00:00:01Z"}`,
		},
		{
			name:    "invalid UTF-8",
			res:     connect.NewResponse(&paymentsv1.RefundResponse{Status: "refunded\xff"}),
			wantLog: "reason=not-encodable",
		},
		{
			name:    "over the size limit",
			res:     connect.NewResponse(&paymentsv1.RefundResponse{Status: "refunded"}),
			maxSize: 10,
			wantLog: "reason=too-large",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs bytes.Buffer
			opts := []Option{WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))}
			if tt.maxSize > 0 {
				opts = append(opts, WithMaxResponseSize(tt.maxSize))
			}
			store := &keepingStore{}
			e := NewEngine(store, opts...)
			exec, _, err := e.Begin(t.Context(), Request{Route: "/p.S/M", Key: "k"})
			require.NoError(t, err)
			msg, _ := tt.res.Any().(proto.Message)
			require.NoError(t, exec.CompleteMessage(&Record{}, msg))
			if tt.wantBody == "" {
				assert.Nil(t, store.record, "stored %s", store.record)
				assert.True(t, store.released, "the claim was not released")
				assert.Contains(t, logs.String(), tt.wantLog)
				return
			}
			require.NotNil(t, store.record, "not stored: %s", logs.String())
			rec, err := decodeRecord(store.record)
			require.NoError(t, err)
			assert.Equal(t, string(msg.ProtoReflect().Descriptor().FullName()), rec.Message)
			got := msg.ProtoReflect().New().Interface()
			require.NoError(t, protojson.Unmarshal(rec.Body, got))
			assert.True(t, proto.Equal(msg, got), "decoded %v", got)
			assert.JSONEq(t, tt.wantBody, string(rec.Body))
		})
	}
}

// keepingStore claims every key and keeps the last completed record.
type keepingStore struct {
	mu       sync.Mutex
	record   []byte
	released bool
}

func (s *keepingStore) Claim(context.Context, string, string, time.Duration) (ClaimResult, error) {
	return ClaimResult{State: StateClaimed}, nil
}

func (s *keepingStore) Complete(_ context.Context, _, _ string, record []byte, _ time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.record = bytes.Clone(record)
	return nil
}

func (s *keepingStore) Release(context.Context, string, string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.released = true
	return nil
}

func (s *keepingStore) Renew(context.Context, string, string, time.Duration) error { return nil }
