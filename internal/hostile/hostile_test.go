package hostile

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
)

// answer is what the handler of a row does. Each adapter has its own
// rendering of it.
type answer int

const (
	// answerJSON: 201 with a JSON body that names the run / a response
	// message that names the run.
	answerJSON answer = iota //nolint:unused // the zero value: rows that set no answer use it
	// answerInvalidJSON: 201, application/json, a body that is not JSON.
	answerInvalidJSON
	// answerGzipJSON: 201, application/json, a gzip-encoded JSON body.
	answerGzipJSON
	// answerNoContent: 204 / an empty response message.
	answerNoContent
	// answerHeaderTwice: WriteHeader(201) then WriteHeader(500) / one
	// header set both through the call info and on the response.
	answerHeaderTwice
	// answerAfterDisconnect: on its first run, waits for its client to go
	// away and then answers as answerJSON, as a handler whose work
	// finished anyway does. Later runs answer at once.
	answerAfterDisconnect
	// answerGiveUp: on its first run, waits for its client to go away and
	// returns without an answer (HTTP: writes nothing; Connect: returns
	// the context's error). Later runs answer as answerJSON.
	answerGiveUp
)

// outcome is what a client gets.
type outcome struct {
	status   int          // httpmw: the HTTP status
	code     connect.Code // interceptor: the error code; 0 for a response
	label    string       // the Idempotency-Status of an error the library raised
	replayed bool         // marked Idempotent-Replayed: true
	gone     bool         // the client went away before an answer
}

// left is what Redis holds for the row's key after both requests.
type left int

const (
	leftUnchecked left = iota
	leftNothing        // no key: never claimed, or released
	leftRecord         // one completed record
)

// tamper rewrites the value stored in Redis (tag byte and record) between
// the two requests of a row.
type tamper func(value []byte) []byte

func withUnknownFields(v []byte) []byte {
	return append([]byte(`d{"zz":{"from":"a later version","list":[1,true,null]},`), v[2:]...)
}

func withNewerVersion(v []byte) []byte {
	return bytes.Replace(v, []byte(`d{"v":1,`), []byte(`d{"v":2,`), 1)
}

func notJSON([]byte) []byte     { return []byte(`d{"v":1,"s":201,"b":`) }
func truncated(v []byte) []byte { return v[:len(v)/2] }
func untagged([]byte) []byte    { return []byte("\x00garbage\xff") }

// row is one case of the hostile-input table. Each request of a row is
// sent twice with the same key (the second time with retryKeys, if set),
// through each adapter that the row applies to.
type row struct {
	name string
	// why says why the expectation holds, citing the contract (SPEC).
	why string

	keys       []string // the key header values; nil sends none
	retryKeys  []string // the retry's key header values; nil repeats keys
	method     string   // HTTP method ("" is POST); GET and HEAD use GetCharge for Connect
	bodySize   int      // httpmw: a request body of this many bytes (0: a small JSON body)
	chunked    bool     // httpmw: the body is sent without a length
	answer     answer
	disconnect bool   // the first client goes away while the handler runs
	tamper     tamper // rewrites the stored value before the retry
	// notForConnect, when set, says why the row does not apply to the
	// interceptor.
	notForConnect string

	want, wantRetry outcome
	wantRuns        int  // handler runs over both requests
	wantNoStore     bool // the store is never called
	wantLeft        left
}

// The library's answers to an invalid key and a store failure.
var (
	invalidKey  = outcome{status: http.StatusUnprocessableEntity, code: connect.CodeInvalidArgument, label: idempotency.StatusInvalidKey}
	unavailable = outcome{status: http.StatusServiceUnavailable, code: connect.CodeUnavailable, label: idempotency.StatusStoreUnavailable}
	created     = outcome{status: http.StatusCreated}
	replayed    = outcome{status: http.StatusCreated, replayed: true}
	tooLarge    = outcome{status: http.StatusRequestEntityTooLarge, label: idempotency.StatusBodyTooLarge}
	gone        = outcome{gone: true}
)

// maxBody is the middleware's body limit in the table.
const maxBody = 64

var hostileRows = []row{
	{
		name: "empty key", keys: []string{""},
		want: created, wantRetry: created, wantRuns: 2, wantNoStore: true, wantLeft: leftNothing,
		why: "SPEC §1.1, §1.3: an empty key is no key, and without the required-key option the request passes through untouched, with no store call",
	},
	{
		name: "256-byte key", keys: []string{strings.Repeat("k", 256)},
		want: invalidKey, wantRetry: invalidKey, wantRuns: 0, wantNoStore: true, wantLeft: leftNothing,
		why: "SPEC §2.2, §7: a key is 1 to 255 bytes; a longer one is invalid (422 / CodeInvalidArgument, invalid-key) and never reaches the store",
	},
	{
		name: "255-byte key", keys: []string{strings.Repeat("k", 255)},
		want: created, wantRetry: replayed, wantRuns: 1, wantLeft: leftRecord,
		why: "SPEC §2.2: 255 bytes is the longest valid key",
	},
	{
		name: "control character (tab)", keys: []string{"key\twith-tab"},
		want: invalidKey, wantRetry: invalidKey, wantRuns: 0, wantNoStore: true, wantLeft: leftNothing,
		why: "SPEC §2.2: no control characters; tab is the one C0 control that HTTP lets through to the server, net/http refuses the others itself",
	},
	{
		name: "control character (U+0085)", keys: []string{"key\u0085next-line"},
		want: invalidKey, wantRetry: invalidKey, wantRuns: 0, wantNoStore: true, wantLeft: leftNothing,
		why: "SPEC §2.2: no control characters, C1 controls in UTF-8 included",
	},
	{
		name: "invalid UTF-8", keys: []string{"key-\xff\xfe"},
		want: invalidKey, wantRetry: invalidKey, wantRuns: 0, wantNoStore: true, wantLeft: leftNothing,
		why: "SPEC §2.2: UTF-8 is allowed, so bytes that are not UTF-8 make an invalid key",
	},
	{
		name: "two header values", keys: []string{"key-a", "key-b"},
		want: invalidKey, wantRetry: invalidKey, wantRuns: 0, wantNoStore: true, wantLeft: leftNothing,
		why: "SPEC §2.2: more than one header value is an error",
	},
	{
		name: "raw list of keys", keys: []string{"key-a, key-b"},
		want: invalidKey, wantRetry: invalidKey, wantRuns: 0, wantNoStore: true, wantLeft: leftNothing,
		why: "SPEC §2.2: a raw value with a comma is a list, that is more than one value; a quoted string may hold a comma",
	},
	{
		name: "quoted key with escapes names the raw key", keys: []string{`"a\"b\\c"`}, retryKeys: []string{`a"b\c`},
		want: created, wantRetry: replayed, wantRuns: 1, wantLeft: leftRecord,
		why: `SPEC §2.2: a raw token and an RFC 8941 quoted string name the same key, so "a\"b\\c" and a"b\c are one key`,
	},
	{
		name: "body over the limit", bodySize: maxBody + 1,
		keys: []string{"key-large"}, want: tooLarge, wantRetry: tooLarge, wantRuns: 0, wantNoStore: true, wantLeft: leftNothing,
		notForConnect: "Connect enforces its own read limit (connect.WithReadMaxBytes) before the interceptor sees a message",
		why:           "SPEC §4.7: over the body limit the answer is 413 and the handler does not run; the limit is checked before the store is asked",
	},
	{
		name: "body over the limit, without a length", bodySize: maxBody + 1, chunked: true,
		keys: []string{"key-large"}, want: tooLarge, wantRetry: tooLarge, wantRuns: 0, wantNoStore: true, wantLeft: leftNothing,
		notForConnect: "Connect enforces its own read limit (connect.WithReadMaxBytes) before the interceptor sees a message",
		why:           "SPEC §4.7: a chunked body is counted as it is read; over the limit it is 413, the handler does not run and nothing is claimed",
	},
	{
		name: "invalid JSON under a JSON content type", keys: []string{"key-invalid-json"}, answer: answerInvalidJSON,
		want: created, wantRetry: created, wantRuns: 2, wantLeft: leftNothing,
		notForConnect: "the interceptor stores the response message as protojson, which is always JSON",
		why:           "SPEC §4.2: invalid JSON reaches the client unchanged, nothing is stored and the claim is released, so a retry executes again",
	},
	{
		name: "gzip-encoded JSON response", keys: []string{"key-gzip"}, answer: answerGzipJSON,
		want: created, wantRetry: replayed, wantRuns: 1, wantLeft: leftRecord,
		notForConnect: "Connect compresses on the wire; the interceptor stores the message, not its encoding",
		why:           "SPEC §4.2: a body with a Content-Encoding is stored byte for byte with that header, unchecked, and replayed with it",
	},
	{
		name: "204 No Content", keys: []string{"key-204"}, answer: answerNoContent,
		want:      outcome{status: http.StatusNoContent},
		wantRetry: outcome{status: http.StatusNoContent, replayed: true}, wantRuns: 1, wantLeft: leftRecord,
		why: "SPEC §4.2: a response without a body is stored and replayed (for Connect: an empty response message)",
	},
	{
		name: "HEAD passes through", method: http.MethodHead, keys: []string{"key-head"},
		want: created, wantRetry: created, wantRuns: 2, wantNoStore: true, wantLeft: leftNothing,
		notForConnect: "Connect has no HEAD requests",
		why:           "SPEC §1.1: only the applicable methods (POST, PATCH) are guarded; others pass through with no store call",
	},
	{
		name: "GET passes through", method: http.MethodGet, keys: []string{"key-get"},
		want: created, wantRetry: created, wantRuns: 2, wantNoStore: true, wantLeft: leftNothing,
		why: "SPEC §1.1, §1.2: GET is not an applicable method; for Connect, a NO_SIDE_EFFECTS procedure called with HTTP GET passes through",
	},
	{
		name: "handler writes its header twice", keys: []string{"key-twice"}, answer: answerHeaderTwice,
		want: created, wantRetry: replayed, wantRuns: 1, wantLeft: leftRecord,
		why: "SPEC §4.3, §5.1: as with net/http the first status wins; the record holds the response as the client saw it (Connect: both values of a header set twice), and the replay is the same",
	},
	{
		name: "client disconnects, the handler finishes its work", keys: []string{"key-finished"}, answer: answerAfterDisconnect, disconnect: true,
		want: gone, wantRetry: replayed, wantRuns: 1, wantLeft: leftRecord,
		why: "SPEC §4.5: a handler that finished its work after its client went away is stored, and that client's retry replays it",
	},
	{
		name: "client disconnects, the handler gives up", keys: []string{"key-gave-up"}, answer: answerGiveUp, disconnect: true,
		want: gone, wantRetry: created, wantRuns: 2, wantLeft: leftRecord,
		why: "SPEC §4.5, §3.3: a handler that returned because its request ended is not stored and its claim is released, so the retry runs at once: never a stuck claim",
	},
	{
		name: "record with unknown fields", keys: []string{"key-future-fields"}, tamper: withUnknownFields,
		want: created, wantRetry: replayed, wantRuns: 1, wantLeft: leftRecord,
		why: "record format v1 (record.go): fields a reader does not know are ignored, so a later writer may add some; the record is replayed",
	},
	{
		name: "record of a newer version", keys: []string{"key-v2"}, tamper: withNewerVersion,
		want: created, wantRetry: unavailable, wantRuns: 1,
		why: "SPEC §6.4: a record that cannot be decoded (a version this reader does not know) is a store failure, 503 / CodeUnavailable, never a panic nor someone else's response",
	},
	{
		name: "corrupted record: not JSON", keys: []string{"key-not-json"}, tamper: notJSON,
		want: created, wantRetry: unavailable, wantRuns: 1,
		why: "SPEC §6.4: a record that cannot be decoded is logged and answered as a store failure",
	},
	{
		name: "corrupted record: truncated", keys: []string{"key-truncated"}, tamper: truncated,
		want: created, wantRetry: unavailable, wantRuns: 1,
		why: "SPEC §6.4: a half-written record is answered as a store failure",
	},
	{
		name: "corrupted record: foreign value", keys: []string{"key-foreign"}, tamper: untagged,
		want: created, wantRetry: unavailable, wantRuns: 1,
		why: "SPEC §6.1, §6.4: a value that the store did not write is a store failure when claiming: fail closed, the handler does not run",
	},
}

func TestHostileInput(t *testing.T) {
	t.Parallel()
	for _, tt := range hostileRows {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			t.Run("httpmw", func(t *testing.T) {
				t.Parallel()
				t.Log(tt.why)
				runHTTPRow(t, tt)
			})
			t.Run("interceptor", func(t *testing.T) {
				t.Parallel()
				if tt.notForConnect != "" {
					t.Skip("not applicable: " + tt.notForConnect)
				}
				t.Log(tt.why)
				runConnectRow(t, tt)
			})
			t.Run("grpcmw", func(t *testing.T) {
				t.Parallel()
				if tt.notForConnect != "" {
					t.Skip("not applicable: " + tt.notForConnect)
				}
				t.Log(tt.why)
				runGRPCRow(t, tt)
			})
		})
	}
}

// rowEnv is a row's store and handler state, for either adapter.
type rowEnv struct {
	redis   *redis.Client
	prefix  string
	store   *spyStore
	runs    atomic.Int32
	started chan struct{} // receives when a handler run starts
	// keys holds the key header values that the last handler run saw.
	keys atomic.Pointer[[]string]
}

func newRowEnv(t *testing.T) *rowEnv {
	t.Helper()
	c, prefix, s := newRedisStore(t, quiet)
	return &rowEnv{redis: c, prefix: prefix, store: newSpy(s), started: make(chan struct{}, 4)}
}

// begin counts a handler run and, on the first run of a row whose client
// goes away, waits for that; it reports the run's number and whether the
// handler is to give up.
func (e *rowEnv) begin(ctx context.Context, a answer, h http.Header) (run int, giveUp bool) {
	keys := h.Values(idempotency.DefaultIdempotencyHeader)
	e.keys.Store(&keys)
	run = int(e.runs.Add(1))
	notify(e.started)
	if run == 1 && (a == answerAfterDisconnect || a == answerGiveUp) {
		<-ctx.Done()
		return run, a == answerGiveUp
	}
	return run, false
}

// send runs one request, or with disconnect, starts it, waits for the
// handler to start and then goes away, and waits until the claim ended.
func (e *rowEnv) send(t *testing.T, disconnect bool, do func(context.Context) error) {
	t.Helper()
	if !disconnect {
		require.NoError(t, do(t.Context()))
		return
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- do(ctx) }()
	select {
	case <-e.started:
	case <-time.After(eventTimeout):
		t.Fatal("the handler did not start")
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(eventTimeout):
		t.Fatal("the request did not end when its client went away")
	}
	e.store.waitEnded(t)
}

// tamperStored rewrites the one value under the row's prefix.
func (e *rowEnv) tamperStored(t *testing.T, f tamper) {
	t.Helper()
	keys := scanKeys(t, e.redis, e.prefix)
	require.Len(t, keys, 1, "the row's storage key")
	v, err := e.redis.Get(t.Context(), keys[0]).Bytes()
	require.NoError(t, err)
	require.NoError(t, e.redis.SetArgs(t.Context(), keys[0], f(v), redis.SetArgs{KeepTTL: true}).Err())
}

// checkEnd checks what the store saw and holds after both requests.
func (e *rowEnv) checkEnd(t *testing.T, tt row) {
	t.Helper()
	assert.Equal(t, tt.wantRuns, int(e.runs.Load()), "handler runs")
	if tt.wantNoStore {
		assert.Zero(t, e.store.calls.Load(), "store calls")
		if tt.wantRuns > 0 {
			// The request did carry the key: it passed through because of
			// what the key or the request was.
			if seen := e.keys.Load(); assert.NotNil(t, seen) {
				assert.Equal(t, tt.keys, *seen, "key header values the handler saw")
			}
		}
	} else {
		assert.NotZero(t, e.store.calls.Load(), "store calls")
	}
	keys := scanKeys(t, e.redis, e.prefix)
	switch tt.wantLeft {
	case leftNothing:
		assert.Empty(t, keys, "keys left in Redis: a claim that was not released, or a record that must not be")
	case leftRecord:
		if assert.Len(t, keys, 1, "keys left in Redis") {
			v, err := e.redis.Get(t.Context(), keys[0]).Bytes()
			require.NoError(t, err)
			assert.True(t, bytes.HasPrefix(v, []byte(`d{`)), "Redis holds %q, not a completed record", v)
		}
	}
}

// httpBody renders the JSON that a run answers.
func httpBody(run int) []byte { return []byte(`{"run":` + strconv.Itoa(run) + `}`) }

// gzipped compresses b. Handlers call it, off the test's goroutine; it
// cannot fail, since a bytes.Buffer takes every write.
func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

func (e *rowEnv) httpHandler(a answer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		run, giveUp := e.begin(r.Context(), a, r.Header)
		if giveUp {
			return
		}
		body := httpBody(run)
		w.Header().Set("Content-Type", "application/json")
		switch a {
		case answerInvalidJSON:
			body = body[:len(body)-1]
		case answerGzipJSON:
			w.Header().Set("Content-Encoding", "gzip")
			body = gzipped(body)
		case answerNoContent:
			w.Header().Del("Content-Type")
			w.WriteHeader(http.StatusNoContent)
			return
		case answerHeaderTwice:
			w.WriteHeader(http.StatusCreated)
			w.WriteHeader(http.StatusInternalServerError)
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	})
}

func runHTTPRow(t *testing.T, tt row) {
	e := newRowEnv(t)
	srv := startHTTP(t, e.store, e.httpHandler(tt.answer), idempotency.WithMaxBodySize(maxBody))
	method := tt.method
	if method == "" {
		method = http.MethodPost
	}
	request := func(ctx context.Context, keys []string) (*httpReply, error) {
		var body io.Reader = strings.NewReader(`{"amount":100}`)
		if tt.bodySize > 0 {
			body = bytes.NewReader(bytes.Repeat([]byte("x"), tt.bodySize))
		}
		if tt.chunked {
			body = io.MultiReader(body)
		}
		return sendHTTP(ctx, srv, method, "/charges", keys, nil, body)
	}

	var first *httpReply
	e.send(t, tt.disconnect, func(ctx context.Context) error {
		var err error
		first, err = request(ctx, tt.keys)
		if tt.want.gone {
			if err == nil {
				return fmt.Errorf("the client got %d, but it went away", first.status)
			}
			return nil
		}
		return err
	})
	if !tt.want.gone {
		checkHTTP(t, "first request", first, tt.want)
		if tt.want.label == "" && tt.want.status != http.StatusNoContent && method != http.MethodHead {
			want := httpBody(1)
			switch tt.answer {
			case answerInvalidJSON:
				want = want[:len(want)-1]
			case answerGzipJSON:
				want = gzipped(want)
			}
			assert.Equal(t, want, first.body, "the client must get exactly what the handler wrote")
		}
	}
	if tt.tamper != nil {
		e.tamperStored(t, tt.tamper)
	}

	retryKeys := tt.retryKeys
	if retryKeys == nil {
		retryKeys = tt.keys
	}
	retry, err := request(t.Context(), retryKeys)
	require.NoError(t, err)
	checkHTTP(t, "retry", retry, tt.wantRetry)
	if tt.wantRetry.replayed && !tt.want.gone {
		assert.Equal(t, first.status, retry.status, "replayed status")
		assert.Equal(t, first.body, retry.body, "replayed body, byte for byte")
		for _, h := range []string{"Content-Type", "Content-Encoding"} {
			assert.Equal(t, first.header.Values(h), retry.header.Values(h), "replayed %s", h)
		}
	}
	if tt.wantRetry.replayed && tt.answer == answerGzipJSON {
		assert.Equal(t, "gzip", retry.header.Get("Content-Encoding"), "Content-Encoding on the replay")
	}
	if tt.want.gone && tt.wantRetry.replayed {
		assert.Equal(t, httpBody(1), retry.body, "the retry gets the work that finished without its client")
	}
	e.checkEnd(t, tt)
}

func checkHTTP(t *testing.T, which string, got *httpReply, want outcome) {
	t.Helper()
	assert.Equal(t, want.status, got.status, "%s: status (body %q)", which, got.body)
	assert.Equal(t, want.label, got.header.Get(idempotency.StatusHeader), "%s: %s", which, idempotency.StatusHeader)
	assert.Equal(t, want.replayed, got.header.Get(idempotency.DefaultReplayHeader) == "true", "%s: replayed", which)
	if want.label != "" {
		assert.Equal(t, "application/problem+json", got.header.Get("Content-Type"), "%s: problem document", which)
	}
}

// connectReply is what a Connect client got.
type connectReply struct {
	msg    proto.Message
	header http.Header
	err    error
}

func (e *rowEnv) paymentService(a answer) *payments {
	return &payments{
		charge: func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
			run, giveUp := e.begin(ctx, a, req.Header())
			if giveUp {
				return nil, ctx.Err()
			}
			msg := &paymentsv1.ChargeResponse{ChargeId: "ch_" + strconv.Itoa(run), Status: "succeeded", AmountCents: req.Msg.GetAmountCents()}
			if a == answerNoContent {
				msg = &paymentsv1.ChargeResponse{}
			}
			res := connect.NewResponse(msg)
			if info, ok := connect.CallInfoForHandlerContext(ctx); ok && a == answerHeaderTwice {
				info.ResponseHeader().Set("X-Twice", "call-info")
			}
			if a == answerHeaderTwice {
				res.Header().Set("X-Twice", "response")
			}
			res.Header().Set("X-Run", strconv.Itoa(run))
			return res, nil
		},
		getCharge: func(ctx context.Context, req *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error) {
			if req.HTTPMethod() != http.MethodGet {
				return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("called with %s, not GET", req.HTTPMethod()))
			}
			run, _ := e.begin(ctx, a, req.Header())
			res := connect.NewResponse(&paymentsv1.GetChargeResponse{Charge: &paymentsv1.ChargeResponse{ChargeId: req.Msg.GetChargeId()}})
			res.Header().Set("X-Run", strconv.Itoa(run))
			return res, nil
		},
	}
}

func runConnectRow(t *testing.T, tt row) {
	e := newRowEnv(t)
	newClient := startConnect(t, e.store, e.paymentService(tt.answer))
	call := func(ctx context.Context, keys []string) connectReply {
		if tt.method == http.MethodGet {
			req := connect.NewRequest(&paymentsv1.GetChargeRequest{ChargeId: "ch_1"})
			if keys != nil {
				req.Header()[idempotency.DefaultIdempotencyHeader] = keys
			}
			res, err := newClient(connect.WithHTTPGet()).GetCharge(ctx, req)
			if err != nil {
				return connectReply{err: err}
			}
			return connectReply{msg: res.Msg, header: res.Header()}
		}
		res, err := newClient().Charge(ctx, chargeRequest(keys, 100))
		if err != nil {
			return connectReply{err: err}
		}
		return connectReply{msg: res.Msg, header: res.Header()}
	}

	var first connectReply
	e.send(t, tt.disconnect, func(ctx context.Context) error {
		first = call(ctx, tt.keys)
		return nil
	})
	checkConnect(t, "first request", first, tt.want)
	if tt.tamper != nil {
		e.tamperStored(t, tt.tamper)
	}

	retryKeys := tt.retryKeys
	if retryKeys == nil {
		retryKeys = tt.keys
	}
	retry := call(t.Context(), retryKeys)
	checkConnect(t, "retry", retry, tt.wantRetry)
	if tt.wantRetry.replayed && !tt.want.gone && first.err == nil && retry.err == nil {
		assert.True(t, proto.Equal(first.msg, retry.msg), "replayed %v, first %v", retry.msg, first.msg)
		for _, h := range []string{"X-Run", "X-Twice"} {
			assert.Equal(t, first.header.Values(h), retry.header.Values(h), "replayed header %s", h)
		}
	}
	if tt.answer == answerHeaderTwice && first.err == nil {
		assert.Equal(t, []string{"call-info", "response"}, first.header.Values("X-Twice"), "the header as the client saw it")
	}
	if tt.want.gone && tt.wantRetry.replayed && retry.err == nil {
		assert.Equal(t, "ch_1", retry.msg.(*paymentsv1.ChargeResponse).GetChargeId(), "the retry gets the work that finished without its client")
	}
	e.checkEnd(t, tt)
}

func checkConnect(t *testing.T, which string, got connectReply, want outcome) {
	t.Helper()
	switch {
	case want.gone:
		assert.Error(t, got.err, "%s: the client went away, yet got an answer", which)
	case want.code != 0:
		ce := connectError(t, got.err)
		assert.Equal(t, want.code, ce.Code(), "%s: code (%v)", which, ce)
		assert.Equal(t, want.label, ce.Meta().Get(idempotency.StatusHeader), "%s: %s", which, idempotency.StatusHeader)
	default:
		require.NoError(t, got.err, which)
		assert.Equal(t, want.replayed, got.header.Get(idempotency.DefaultReplayHeader) == "true", "%s: replayed", which)
	}
}
