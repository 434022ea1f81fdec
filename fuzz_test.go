package idempotency

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/protorec"
)

// canonicalV4 is an independent spelling of what SPEC §2.3 calls the
// canonical form of a version 4 UUID with the RFC 4122 variant.
var canonicalV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// FuzzParseKey checks the key rules of SPEC §2.2 and §2.3 on arbitrary
// header values: ParseKey never panics; a key it accepts is 1 to 255 bytes
// of valid UTF-8 without control characters; the raw and the RFC 8941
// quoted spellings of a key name the same key; and under UUID enforcement
// the key is a canonical lower-case v4 UUID.
func FuzzParseKey(f *testing.F) {
	for _, seed := range []string{
		"", " ", "abc", "  abc\t", `"abc"`, `"a\"b\\c"`, `"a,b"`, "a,b", `""`, `"abc`, `"a\nb"`,
		`"a"b"`, `"é"`, "clé-été", "a\x01b", "a\x7fb", "a\u0085b", "a\xffb", "\xed\xa0\x80",
		strings.Repeat("k", 255), strings.Repeat("k", 256), strings.Repeat("é", 128),
		"123e4567-e89b-42d3-a456-426614174000", "123E4567-E89B-42D3-A456-426614174000",
		"{123e4567-e89b-42d3-a456-426614174000}", "urn:uuid:123e4567-e89b-42d3-a456-426614174000",
		"123e4567e89b42d3a456426614174000", `"123e4567-e89b-42d3-a456-426614174000"`,
		"123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-42d3-c456-426614174000",
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, value string, enforce bool) {
		key, err := ParseKey([]string{value}, enforce)
		if err != nil {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("ParseKey(%q, %v): error %v does not wrap ErrInvalidKey", value, enforce, err)
			}
			if key != "" {
				t.Fatalf("ParseKey(%q, %v): key %q returned with error %v", value, enforce, key, err)
			}
		}
		if (err == nil && key == "") != (strings.TrimSpace(value) == "") {
			t.Fatalf("ParseKey(%q, %v) = %q, %v: no key must mean a blank value, and only that", value, enforce, key, err)
		}
		if _, err := ParseKey([]string{value, value}, enforce); !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("ParseKey with two values %q: error %v, want ErrInvalidKey", value, err)
		}
		if err != nil || key == "" {
			return
		}
		checkKeyShape(t, key)

		if enforce {
			if !canonicalV4.MatchString(key) {
				t.Fatalf("ParseKey(%q, true) = %q, not a canonical lower-case v4 UUID", value, key)
			}
			// Enforcement only narrows what is accepted.
			if _, err := ParseKey([]string{value}, false); err != nil {
				t.Fatalf("ParseKey(%q) fails without enforcement (%v) but succeeds with it", value, err)
			}
			// Every spelling of one UUID is one key.
			if again, err := ParseKey([]string{key}, true); err != nil || again != key {
				t.Fatalf("the canonical key %q parses to %q, %v", key, again, err)
			}
			return
		}

		// The quoted spelling of any printable ASCII key names that key,
		// with and without enforcement.
		if printableASCII(key) {
			quoted := quoteKey(key)
			got, err := ParseKey([]string{quoted}, false)
			if err != nil || got != key {
				t.Fatalf("ParseKey(%q) = %q, %v; want %q, the key that %q names", quoted, got, err, key, value)
			}
			if rawSpellable(key) {
				raw4, rawErr := ParseKey([]string{key}, true)
				quoted4, quotedErr := ParseKey([]string{quoted}, true)
				if raw4 != quoted4 || (rawErr == nil) != (quotedErr == nil) {
					t.Fatalf("under enforcement, %q gives %q, %v but %q gives %q, %v", key, raw4, rawErr, quoted, quoted4, quotedErr)
				}
			}
		}
		// The raw spelling of a key that a raw token can carry names the
		// same key as its quoted spelling did.
		if strings.HasPrefix(strings.TrimSpace(value), `"`) && rawSpellable(key) {
			if got, err := ParseKey([]string{key}, false); err != nil || got != key {
				t.Fatalf("quoted %q names %q, but the raw spelling parses to %q, %v", value, key, got, err)
			}
		}
	})
}

// checkKeyShape fails the test unless key satisfies SPEC §2.2.
func checkKeyShape(t *testing.T, key string) {
	t.Helper()
	if len(key) < 1 || len(key) > MaxKeyLength {
		t.Fatalf("key of %d bytes accepted", len(key))
	}
	if !utf8.ValidString(key) {
		t.Fatalf("key %q is not valid UTF-8", key)
	}
	for _, r := range key {
		if unicode.IsControl(r) {
			t.Fatalf("key %q holds the control character %U", key, r)
		}
	}
}

func printableASCII(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// rawSpellable reports whether key can be sent as a raw token: no list
// separator, nothing that trimming would drop, and no leading quote.
func rawSpellable(key string) bool {
	return !strings.Contains(key, ",") && strings.TrimSpace(key) == key && key[0] != '"'
}

// quoteKey spells key as an RFC 8941 string.
func quoteKey(key string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := range len(key) {
		if key[i] == '"' || key[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(key[i])
	}
	b.WriteByte('"')
	return b.String()
}

// FuzzDecodeRecord checks the record format of record.go on two kinds of
// input. Arbitrary bytes: decodeRecord never panics, and a record it
// accepts encodes to valid JSON that decodes to an equal record, so a
// record survives any number of round trips (SPEC §6.4). Records built from
// arbitrary fields: they encode to valid JSON and decode back equal, with a
// byte-identical body (SPEC §4.3) and invalid UTF-8 in strings turned into
// U+FFFD, byte by byte, as encoding/json does.
func FuzzDecodeRecord(f *testing.F) {
	for _, rec := range []*Record{
		{Status: 201, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"id":1}`)},
		{Status: 204},
		{Status: 200, Header: http.Header{"Content-Encoding": {"gzip"}}, Body: []byte{0x1f, 0x8b, 0, 0xff}},
		{Status: 200, Message: "idemkey.payments.v1.ChargeResponse", Body: []byte(`{"chargeId":"ch_1"}`),
			Header: http.Header{"X-A": {"1", "2"}}, Trailer: http.Header{"X-T": {"\x01\"\\\u2028"}}},
		{Status: 409, Error: &ErrorRecord{Code: 10, Message: "dup", Details: []ErrorDetail{{Type: "google.rpc.ErrorInfo", Value: []byte{1, 2}}}}},
		{Status: 599, Error: &ErrorRecord{Code: 99}, fingerprint: Fingerprint{1, 2, 3}},
	} {
		f.Add(appendRecord(nil, rec), 0, "", "", "", []byte(nil), "", false, uint32(0), "", "", []byte(nil), []byte(nil))
	}
	for _, data := range []string{
		``, `null`, `{}`, `[]`, `{"v":1}`, `{"v":1,"s":200}`, `{"v":2,"s":200}`, `{"v":1,"s":99}`, `{"v":1,"s":600}`,
		`{"v":1,"s":200,"b":"!!"}`, `{"v":1,"s":200,"fp":"AAE="}`, `{"v":1,"s":200,"h":{"a":null,"b":[null]},"t":{}}`,
		`{"v":1,"s":200,"e":{"c":4294967296}}`, `{"v":1,"s":200,"e":{"c":1,"d":[{"t":"x","v":null}]}}`,
		`{"v":1,"s":200,"m":"\ud800","future":{"x":[1,2,3]}}`, `{"v":1.0,"s":200}`, `{"v":1,"s":200,"b":""}`,
		`{"v":1,"s":200,"h":{"A":["1"],"A":["2"]}}`, "{\"v\":1,\"s\":200,\"m\":\"\xff\"}",
	} {
		f.Add([]byte(data), 0, "", "", "", []byte(nil), "", false, uint32(0), "", "", []byte(nil), []byte(nil))
	}
	f.Add([]byte(nil), 201, "Content-Type", "application/json", "", []byte(`{"id":1}`), "", false, uint32(0), "", "", []byte(nil), []byte(nil))
	f.Add([]byte(nil), 200, "X-\xff", "a\xffb\xc3", "x\x00y", []byte{0, 0xff}, "pkg.\xfeMsg", false, uint32(0), "", "", []byte(nil), bytes.Repeat([]byte{7}, 32))
	f.Add([]byte(nil), 503, "", "", "", []byte(nil), "", true, uint32(14), "down \"now\"\n", "google.rpc.RetryInfo", []byte{8, 1}, []byte(nil))
	f.Fuzz(func(t *testing.T, data []byte, status int, name, value1, value2 string, body []byte, message string,
		hasError bool, code uint32, errMessage, detailType string, detailValue, fp []byte,
	) {
		if rec, err := decodeRecord(data); err != nil {
			if !errors.Is(err, errCorruptRecord) {
				t.Fatalf("decodeRecord(%q): error %v does not wrap errCorruptRecord", data, err)
			}
		} else {
			again := roundTrip(t, rec)
			if diff := recordDiff(rec, again); diff != "" {
				t.Fatalf("decodeRecord(%q) changed on a round trip: %s", data, diff)
			}
		}

		rec := &Record{Status: 100 + int(uint(status)%500), Body: body, Message: message}
		if name != "" || value1 != "" || value2 != "" {
			rec.Header = http.Header{name: {value1, value2}}
			rec.Trailer = http.Header{value1: {name}}
		}
		if hasError {
			rec.Error = &ErrorRecord{Code: code, Message: errMessage}
			if name != "" {
				rec.Error.Meta = http.Header{value2: {name, value1}}
			}
			if detailType != "" || len(detailValue) > 0 {
				rec.Error.Details = []ErrorDetail{{Type: detailType, Value: detailValue}}
			}
		}
		copy(rec.fingerprint[:], fp)
		got := roundTrip(t, rec)
		if diff := recordDiff(sanitized(rec), got); diff != "" {
			t.Fatalf("record %+v came back different: %s", rec, diff)
		}
		if !bytes.Equal(got.Body, body) {
			t.Fatalf("body %x came back as %x", body, got.Body)
		}
	})
}

// roundTrip encodes rec, checks that the encoding is JSON, and decodes it.
func roundTrip(t *testing.T, rec *Record) *Record {
	t.Helper()
	data := appendRecord(nil, rec)
	if !json.Valid(data) {
		t.Fatalf("appendRecord(%+v) = %q, not JSON", rec, data)
	}
	got, err := decodeRecord(data)
	if err != nil {
		t.Fatalf("decodeRecord(appendRecord(%+v)) = %v; encoding: %q", rec, err, data)
	}
	return got
}

// sanitized returns rec as a round trip must give it back: headers,
// trailers and error messages byte for byte (SPEC §5.1); in the names of
// types, which are ASCII when they are valid at all, each byte of invalid
// UTF-8 becomes U+FFFD.
func sanitized(rec *Record) *Record {
	out := *rec
	out.Message = validUTF8(rec.Message)
	if e := rec.Error; e != nil {
		out.Error = &ErrorRecord{Code: e.Code, Message: e.Message, Meta: e.Meta}
		for _, d := range e.Details {
			out.Error.Details = append(out.Error.Details, ErrorDetail{Type: validUTF8(d.Type), Value: d.Value})
		}
	}
	return &out
}

// validUTF8 replaces each byte of invalid UTF-8 in s with U+FFFD.
func validUTF8(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r) // ranging over s yields U+FFFD for each invalid byte
	}
	return b.String()
}

// recordDiff describes how two records differ, or returns "". Empty and
// absent slices and maps are alike: the encoding leaves them all out.
func recordDiff(want, got *Record) string {
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	if want.Status != got.Status {
		add("status %d, want %d", got.Status, want.Status)
	}
	if !headersEqual(want.Header, got.Header) {
		add("header %q, want %q", got.Header, want.Header)
	}
	if !headersEqual(want.Trailer, got.Trailer) {
		add("trailer %q, want %q", got.Trailer, want.Trailer)
	}
	if !bytes.Equal(want.Body, got.Body) {
		add("body %q, want %q", got.Body, want.Body)
	}
	if want.Message != got.Message {
		add("message %q, want %q", got.Message, want.Message)
	}
	if want.fingerprint != got.fingerprint {
		add("fingerprint %x, want %x", got.fingerprint, want.fingerprint)
	}
	switch we, ge := want.Error, got.Error; {
	case (we == nil) != (ge == nil):
		add("error %+v, want %+v", ge, we)
	case we != nil:
		if we.Code != ge.Code || we.Message != ge.Message || len(we.Details) != len(ge.Details) ||
			!headersEqual(we.Meta, ge.Meta) {
			add("error %+v, want %+v", ge, we)
			break
		}
		for i := range we.Details {
			if we.Details[i].Type != ge.Details[i].Type || !bytes.Equal(we.Details[i].Value, ge.Details[i].Value) {
				add("error detail %d %+v, want %+v", i, ge.Details[i], we.Details[i])
			}
		}
	}
	return strings.Join(diffs, "; ")
}

func headersEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if av[i] != bv[i] {
				return false
			}
		}
	}
	return true
}

// nopStore fails every call: replaying never reaches the store.
type nopStore struct{}

var errNopStore = errors.New("nopStore: not used by replays")

func (nopStore) Claim(context.Context, string, string, time.Duration) (ClaimResult, error) {
	return ClaimResult{}, errNopStore
}

func (nopStore) Complete(context.Context, string, string, []byte, time.Duration) error {
	return errNopStore
}
func (nopStore) Release(context.Context, string, string) error { return errNopStore }
func (nopStore) Renew(context.Context, string, string, time.Duration) error {
	return errNopStore
}

// FuzzReplay feeds stored records, as a store hands them back, to the
// interceptor's replay: it never panics, never modifies the record, which
// other replays share, and answers either the stored response, as a
// message of the stored type (SPEC §5.1), or the stored handler error
// (§4.4), or a store failure (§6.4): never anything else. A record that the
// interceptor itself would have written always replays, as an equal
// message.
func FuzzReplay(f *testing.F) {
	charge := string((&paymentsv1.ChargeResponse{}).ProtoReflect().Descriptor().FullName())
	f.Add(charge, []byte(`{"chargeId":"ch_1","amountCents":"100"}`), false, true, false, uint32(0), "", "", []byte(nil), "X-A", "1", "ch_1", int64(100))
	f.Add(charge, []byte(nil), false, false, true, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add(charge, []byte(`{"chargeId":1}`), false, true, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add(charge, []byte(`{"createdAt":"not a time","unknown":1}`), false, false, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("idemkey.payments.v1.RefundResponse", []byte(`{"status":"refunded"}`), false, true, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("google.protobuf.Timestamp", []byte(`"2024-01-01T00:00:00Z"`), false, false, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("google.protobuf.Any", []byte(`{"@type":"type.googleapis.com/google.protobuf.Timestamp","value":"1970-01-01T00:00:00Z"}`), false, false, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("no.such.Message", []byte(`{}`), false, false, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("not a name", []byte(nil), false, false, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("", []byte(nil), false, false, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("", []byte(nil), true, false, false, uint32(6), "duplicate", "google.protobuf.Timestamp", []byte{8, 1}, "X-E", "e", "", int64(0))
	f.Add("", []byte(nil), true, true, false, uint32(0), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("", []byte(nil), true, false, false, uint32(17), "", "", []byte(nil), "", "", "", int64(0))
	f.Add("", []byte(nil), true, false, false, uint32(3), "bad", "", []byte{1}, "", "", "", int64(0))
	f.Add("", []byte(nil), true, false, false, uint32(3), "bad", "no.such.Detail", []byte{0xff}, "", "", "", int64(0))
	f.Fuzz(func(t *testing.T, message string, body []byte, hasError, withSchema, valid bool,
		code uint32, errMessage, detailType string, detailValue []byte, headerName, headerValue, chargeID string, amount int64,
	) {
		var want proto.Message
		if valid && !hasError {
			// What the interceptor writes for a ChargeResponse.
			want = &paymentsv1.ChargeResponse{ChargeId: chargeID, AmountCents: amount, CreatedAt: timestamppb.New(time.Unix(amount%1e10, 0))}
			var err error
			if body, err = protojson.Marshal(want); err != nil {
				t.Skip("not a message the interceptor could store:", err)
			}
			message = charge
		}
		stored := &Record{Status: http.StatusOK, Message: message, Body: body}
		if headerName != "" {
			stored.Header = http.Header{headerName: {headerValue}}
			stored.Trailer = http.Header{headerName: {headerValue, headerValue}}
		}
		if hasError {
			stored.Status = protorec.HTTPStatus(uint32(connect.Code(code)))
			stored.Error = &ErrorRecord{Code: code, Message: errMessage}
			if detailType != "" || len(detailValue) > 0 {
				stored.Error.Details = []ErrorDetail{{Type: detailType, Value: detailValue}}
			}
		}
		// Replays get records as the engine decodes them from a store.
		rec, err := decodeRecord(appendRecord(nil, stored))
		if err != nil {
			t.Fatalf("a record that appendRecord wrote does not decode: %v", err)
		}
		before := roundTrip(t, rec)

		i := NewInterceptor(nopStore{}, WithLogger(slog.New(slog.DiscardHandler)))
		spec := connect.Spec{Procedure: "/idemkey.payments.v1.PaymentService/Charge", StreamType: connect.StreamTypeUnary}
		if withSchema {
			spec.Schema = paymentsv1.File_idemkey_payments_v1_payments_proto.Services().Get(0).Methods().ByName("Charge")
		}
		res, err := i.replay(t.Context(), spec, &Request{Route: spec.Procedure, Key: "fuzz"}, rec)

		if diff := recordDiff(before, rec); diff != "" {
			t.Fatalf("replay modified the shared record: %s", diff)
		}
		if (res == nil) == (err == nil) {
			t.Fatalf("replay returned response %v and error %v: exactly one is expected", res, err)
		}
		if err != nil {
			checkReplayError(t, rec, err)
			if want != nil {
				t.Fatalf("a record the interceptor wrote did not replay: %v", err)
			}
			return
		}
		if rec.Error != nil {
			t.Fatalf("a stored error replayed as the response %v", res.Any())
		}
		w, ok := res.Any().(interface{ Unwrap() proto.Message })
		if !ok {
			t.Fatalf("replayed %T, which does not unwrap to a message", res.Any())
		}
		msg := w.Unwrap()
		if got := msg.ProtoReflect().Descriptor().FullName(); got != protoreflect.FullName(rec.Message) {
			t.Fatalf("replayed a %s for a stored %s", got, rec.Message)
		}
		if withSchema && rec.Message != charge {
			t.Fatalf("replayed a %s on a procedure that answers %s", rec.Message, charge)
		}
		if res.Header().Get(DefaultReplayHeader) != "true" {
			t.Fatalf("replay header missing: %v", res.Header())
		}
		for k, vs := range rec.Trailer {
			if len(res.Trailer()[k]) != len(vs) {
				t.Fatalf("stored trailer %q lost: %v", k, res.Trailer())
			}
		}
		if want != nil && !proto.Equal(want, msg) {
			t.Fatalf("replayed %v, want %v", msg, want)
		}
	})
}

// checkReplayError fails the test unless err is the stored handler error or
// the interceptor's store failure.
func checkReplayError(t *testing.T, rec *Record, err error) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("replay error %T %v is not a *connect.Error", err, err)
	}
	if errors.Is(err, ErrStoreUnavailable) {
		if ce.Code() != connect.CodeUnavailable || ce.Meta().Get(StatusHeader) != StatusStoreUnavailable {
			t.Fatalf("store failure answered as %v, metadata %v", ce.Code(), ce.Meta())
		}
		if !errors.Is(err, errCorruptReplay) {
			t.Fatalf("store failure %v does not say why the record cannot be replayed", err)
		}
		return
	}
	if rec.Error == nil {
		t.Fatalf("a stored response replayed as the error %v", err)
	}
	if uint32(ce.Code()) != rec.Error.Code || ce.Message() != rec.Error.Message {
		t.Fatalf("replayed error %v %q, stored %d %q", ce.Code(), ce.Message(), rec.Error.Code, rec.Error.Message)
	}
	if len(ce.Details()) != len(rec.Error.Details) {
		t.Fatalf("replayed %d details, stored %d", len(ce.Details()), len(rec.Error.Details))
	}
	for n, d := range ce.Details() {
		// Connect names a detail by the last segment of its type URL; the
		// interceptor stores that name, so only a foreign record's type can
		// hold a slash.
		stored := rec.Error.Details[n].Type
		if d.Type() != stored[strings.LastIndexByte(stored, '/')+1:] || !bytes.Equal(d.Bytes(), rec.Error.Details[n].Value) {
			t.Fatalf("replayed detail %s %x, stored %+v", d.Type(), d.Bytes(), rec.Error.Details[n])
		}
	}
	if ce.Meta().Get(DefaultReplayHeader) != "true" {
		t.Fatalf("replayed error without the replay header: %v", ce.Meta())
	}
}
