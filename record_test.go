package idempotency

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sampleRecords() map[string]*Record {
	return map[string]*Record{
		"http json": {
			Status: 201,
			Header: http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Location": {"/charges/1"}},
			Body:   []byte("{\"id\": 1,\n \"note\":\"caf\xc3\xa9\"}"),
		},
		"http bodiless": {Status: 204},
		"http gzip": {
			Status: 200,
			Header: http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"gzip"}},
			Body:   []byte{0x1f, 0x8b, 0x08, 0x00, 0xff, 0x00, 0x80},
		},
		"connect message": {
			Status:  200,
			Message: "idemkey.payments.v1.ChargeResponse",
			Header:  http.Header{"X-Trace": {"a\"b\\c\u2028\x01"}},
			Trailer: http.Header{"X-Done": {"1", "2"}},
			Body:    []byte(`{"chargeId":"ch_1"}`),
		},
		"connect error": {
			Status: 409,
			Header: http.Header{"X-Why": {"dup"}},
			Error: &ErrorRecord{
				Code:    10,
				Message: "tab\there \"quoted\" <html>",
				Details: []ErrorDetail{{Type: "google.rpc.ErrorInfo", Value: []byte{0, 1, 2, 0xff}}},
			},
		},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	for name, rec := range sampleRecords() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rec.fingerprint = Fingerprint{1, 2, 3}
			data := appendRecord(nil, rec)
			require.True(t, json.Valid(data), "not JSON: %s", data)
			got, err := decodeRecord(data)
			require.NoError(t, err)
			assert.Equal(t, rec.Status, got.Status)
			assert.Equal(t, rec.Body, got.Body, "body must be byte-identical")
			assert.Equal(t, rec.Message, got.Message)
			assert.Equal(t, rec.fingerprint, got.fingerprint)
			assert.Len(t, got.Header, len(rec.Header))
			for k, v := range rec.Header {
				assert.Equal(t, v, got.Header[k], k)
			}
			for k, v := range rec.Trailer {
				assert.Equal(t, v, got.Trailer[k], k)
			}
			assert.Equal(t, rec.Error, got.Error)
		})
	}
}

// TestRecordKeepsBytesThatAreNotUTF8 checks that header, trailer and
// metadata names and values and error messages come back byte for byte
// (SPEC §5.1), in a record that is still JSON.
func TestRecordKeepsBytesThatAreNotUTF8(t *testing.T) {
	t.Parallel()
	rec := &Record{
		Status:  500,
		Header:  http.Header{"X-Bad": {"a\xffb", "ok"}, "X-Good": {"fine"}, "X-\xfe": {"v"}},
		Trailer: http.Header{"X-T": {"\xc3"}},
		Error: &ErrorRecord{
			Code: 13, Message: "broken \xff message",
			Meta: http.Header{"X-Meta": {"\xe2\x80"}, "X-Plain": {"p"}},
		},
	}
	data := appendRecord(nil, rec)
	require.True(t, json.Valid(data), "%s", data)
	got, err := decodeRecord(data)
	require.NoError(t, err)
	assert.Equal(t, rec.Header, got.Header)
	assert.Equal(t, rec.Trailer, got.Trailer)
	assert.Equal(t, rec.Error.Message, got.Error.Message)
	assert.Equal(t, rec.Error.Meta, got.Error.Meta)
}

func TestDecodeRecordRejectsDamage(t *testing.T) {
	t.Parallel()
	good := appendRecord(nil, sampleRecords()["connect error"])
	// Every truncation of a record (a half-written record) is an error, never a
	// panic and never a partial response.
	for i := range good {
		_, err := decodeRecord(good[:i])
		require.Error(t, err, "prefix of %d bytes decoded", i)
		assert.ErrorIs(t, err, errCorruptRecord)
	}
	tests := []struct {
		name string
		data string
	}{
		{name: "not json", data: "garbage"},
		{name: "no version", data: `{"s":200}`},
		{name: "newer version", data: `{"v":2,"s":200}`},
		{name: "status too low", data: `{"v":1,"s":0}`},
		{name: "status too high", data: `{"v":1,"s":600}`},
		{name: "short fingerprint", data: `{"v":1,"s":200,"fp":"AAE="}`},
		{name: "body not base64", data: `{"v":1,"s":200,"b":"%%%"}`},
		{name: "header of wrong type", data: `{"v":1,"s":200,"h":{"A":"b"}}`},
		{name: "json null", data: `null`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := decodeRecord([]byte(tt.data))
			require.Error(t, err)
			assert.ErrorIs(t, err, errCorruptRecord)
		})
	}
}

func TestDecodeRecordIgnoresUnknownFields(t *testing.T) {
	t.Parallel()
	got, err := decodeRecord([]byte(`{"v":1,"s":201,"b":"e30=","future":{"x":[1,2]},"z":true}`))
	require.NoError(t, err)
	assert.Equal(t, 201, got.Status)
	assert.Equal(t, []byte("{}"), got.Body)
}

func BenchmarkAppendRecord(b *testing.B) {
	rec := sampleRecords()["http json"]
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendRecord(buf[:0], rec)
	}
}

func BenchmarkDecodeRecord(b *testing.B) {
	data := appendRecord(nil, sampleRecords()["http json"])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeRecord(data); err != nil {
			b.Fatal(err)
		}
	}
}
