package httpmw

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

func TestIsJSONType(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ct   string
		want bool
	}{
		{name: "json", ct: "application/json", want: true},
		{name: "charset", ct: "application/json; charset=utf-8", want: true},
		{name: "spaces", ct: " application/json ;charset=utf-8", want: true},
		{name: "capitals", ct: "APPLICATION/JSON", want: true},
		{name: "problem", ct: "application/problem+json", want: true},
		{name: "vendor", ct: "application/vnd.example.v2+json; q=1", want: true},
		{name: "suffix in capitals", ct: "application/merge-patch+JSON", want: true},
		{name: "empty", ct: ""},
		{name: "text", ct: "text/plain"},
		{name: "html", ct: "text/html; charset=utf-8"},
		{name: "json-seq", ct: "application/json-seq"},
		{name: "jsonp", ct: "application/jsonp"},
		{name: "bare suffix", ct: "+json"},
		{name: "empty subtype", ct: "application/+json"},
		{name: "no type", ct: "/x+json"},
		{name: "suffix in a parameter", ct: "text/plain; x=a+json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, isJSONType(tt.ct))
		})
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		d    time.Duration
		want string
	}{
		{d: time.Nanosecond, want: "1"},
		{d: 100 * time.Millisecond, want: "1"},
		{d: time.Second, want: "1"},
		{d: time.Second + 1, want: "2"},
		{d: 2500 * time.Millisecond, want: "3"},
		{d: time.Minute, want: "60"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, idempotency.Settings{RetryAfter: tt.d}.RetryAfterSeconds(), "%v", tt.d)
	}
}

func TestReadBody(t *testing.T) {
	t.Parallel()
	body := bytes.Repeat([]byte("0123456789"), 300) // 3000 bytes
	errBroken := errors.New("broken")
	tests := []struct {
		name  string
		r     io.Reader
		size  int64
		limit int64

		wantLen int
		wantErr error
	}{
		{name: "nil", r: nil, size: 0, limit: 10},
		{name: "NoBody", r: http.NoBody, size: 0, limit: 10},
		{name: "declared", r: bytes.NewReader(body), size: 3000, limit: 3000, wantLen: 3000},
		{name: "undeclared", r: bytes.NewReader(body), size: -1, limit: 3000, wantLen: 3000},
		{name: "one byte at a time", r: iotest.OneByteReader(bytes.NewReader(body)), size: -1, limit: 5000, wantLen: 3000},
		{name: "data with EOF", r: iotest.DataErrReader(bytes.NewReader(body)), size: -1, limit: 3000, wantLen: 3000},
		{name: "declared too short", r: bytes.NewReader(body), size: 10, limit: 5000, wantLen: 3000},
		{name: "over by one", r: bytes.NewReader(body), size: -1, limit: 2999, wantErr: idempotency.ErrBodyTooLarge},
		{name: "far over", r: bytes.NewReader(body), size: -1, limit: 10, wantErr: idempotency.ErrBodyTooLarge},
		{name: "broken", r: io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(errBroken)), size: -1, limit: 10, wantErr: errBroken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := readBody(make([]byte, 0, 16), tt.r, tt.size, tt.limit)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				// An oversized body is never read beyond one byte past the
				// limit.
				assert.LessOrEqual(t, int64(len(got)), tt.limit+1)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, body[:tt.wantLen], got)
		})
	}
}

// TestReadBodyStopsAtLimit checks that no more than limit+1 bytes are taken
// from the client, however large the buffer.
func TestReadBodyStopsAtLimit(t *testing.T) {
	t.Parallel()
	r := strings.NewReader(strings.Repeat("x", 100))
	got, err := readBody(make([]byte, 0, 1024), r, -1, 10)
	require.ErrorIs(t, err, idempotency.ErrBodyTooLarge)
	assert.Len(t, got, 11)
	assert.Equal(t, 89, r.Len(), "bytes left unread")
}

func TestNeverStored(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"Set-Cookie", "Authorization", "Proxy-Authorization", "Connection",
		"Transfer-Encoding", "Content-Length", "Upgrade", "Keep-Alive", "Te", "Trailer"} {
		assert.True(t, idempotency.NeverStored(name), name)
	}
	for _, name := range []string{"Content-Type", "Content-Encoding", "Location", "X-Request-Id"} {
		assert.False(t, idempotency.NeverStored(name), name)
	}
}
