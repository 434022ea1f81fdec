package idempotency

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestOptionsPanicNamingTheOption(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		opt       Option
		wantPanic string
	}{
		{name: "negative expiry", opt: WithExpiry(-time.Second), wantPanic: "WithExpiry"},
		{name: "zero lease", opt: WithLease(0), wantPanic: "WithLease"},
		{name: "negative lease", opt: WithLease(-time.Second), wantPanic: "WithLease"},
		{name: "negative wait", opt: WithWait(-time.Second), wantPanic: "WithWait"},
		{name: "empty key header", opt: WithIdempotencyHeader(" "), wantPanic: "WithIdempotencyHeader"},
		{name: "bad key header", opt: WithIdempotencyHeader("Idem Key"), wantPanic: "WithIdempotencyHeader"},
		{name: "empty replay header", opt: WithReplayHeader(""), wantPanic: "WithReplayHeader"},
		{name: "no methods", opt: WithApplicableMethods(), wantPanic: "WithApplicableMethods"},
		{name: "empty method", opt: WithApplicableMethods("POST", ""), wantPanic: "WithApplicableMethods"},
		{name: "zero retry after", opt: WithRetryAfter(0), wantPanic: "WithRetryAfter"},
		{name: "zero store timeout", opt: WithStoreTimeout(0), wantPanic: "WithStoreTimeout"},
		{name: "zero body limit", opt: WithMaxBodySize(0), wantPanic: "WithMaxBodySize"},
		{name: "zero response limit", opt: WithMaxResponseSize(0), wantPanic: "WithMaxResponseSize"},
		{name: "nil policy", opt: WithStorePolicy(nil), wantPanic: "WithStorePolicy"},
		{name: "nil procedures", opt: WithProcedures(nil), wantPanic: "WithProcedures"},
		{name: "negative retries", opt: WithMaxRetries(-1), wantPanic: "WithMaxRetries"},
		{name: "zero backoff", opt: WithBackoff(0, time.Second), wantPanic: "WithBackoff"},
		{name: "backoff above max", opt: WithBackoff(time.Second, time.Millisecond), wantPanic: "WithBackoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				r := recover()
				msg, _ := r.(string)
				assert.Contains(t, msg, tt.wantPanic)
				assert.Contains(t, msg, "idempotency: ")
			}()
			newConfig([]Option{tt.opt})
			t.Errorf("%s did not panic", tt.name)
		})
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c := newConfig(nil)
	assert.Equal(t, "Idempotency-Key", c.keyHeader)
	assert.Equal(t, "Idempotent-Replayed", c.replayHeader)
	assert.False(t, c.enforceUUID4)
	assert.Equal(t, 24*time.Hour, c.expiry)
	assert.Equal(t, []string{"POST", "PATCH"}, c.methods)
	assert.False(t, c.requireKey)
	assert.Equal(t, 10*time.Second, c.lease)
	assert.Zero(t, c.wait)
	assert.Equal(t, time.Second, c.retryAfter)
	assert.Equal(t, 2*time.Second, c.storeTimeout)
	assert.False(t, c.failOpen)
	assert.EqualValues(t, 1<<20, c.maxBody)
	assert.EqualValues(t, 1<<20, c.maxResponse)
	assert.Equal(t, []string{"Content-Type", "Content-Encoding", "Content-Language", "Location"}, c.storedHeaders)
	assert.True(t, c.fingerprint)
	assert.Equal(t, 3, c.maxRetries)
}

func TestStoredHeadersNeverIncludeCredentials(t *testing.T) {
	t.Parallel()
	c := newConfig([]Option{WithStoredHeaders("set-cookie", "Authorization", "x-request-id", "connection")})
	assert.Equal(t, []string{"X-Request-Id"}, c.storedHeaders)
}

func TestStorePolicies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                          string
		o                             Outcome
		wantAll, wantSuccess, wantNo5 bool
	}{
		{name: "201", o: Outcome{Status: 201}, wantAll: true, wantSuccess: true, wantNo5: true},
		{name: "302", o: Outcome{Status: 302}, wantAll: true, wantSuccess: true, wantNo5: true},
		{name: "400", o: Outcome{Status: 400}, wantAll: true, wantNo5: true},
		{name: "429", o: Outcome{Status: 429}, wantAll: true},
		{name: "500", o: Outcome{Status: 500}, wantAll: true},
		{name: "connect aborted", o: Outcome{Status: 409, Code: 10}, wantAll: true, wantNo5: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.wantAll, StoreAll(tt.o))
			assert.Equal(t, tt.wantSuccess, StoreSuccess(tt.o))
			assert.Equal(t, tt.wantNo5, StoreUnlessServerError(tt.o))
		})
	}
}
