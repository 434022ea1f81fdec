package httpmw

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// validJSONCases are inputs where a validator is likely to go wrong. Each
// want is what encoding/json says; the table test checks that too, so a
// change in encoding/json shows up as a failing case rather than a silent
// disagreement.
var validJSONCases = []struct {
	name string
	in   string
	want bool
}{
	// Empty and white space.
	{name: "empty", in: "", want: false},
	{name: "space only", in: " \t\r\n", want: false},
	{name: "byte order mark", in: "\xef\xbb\xbf{}", want: false},
	{name: "surrounding space", in: " \t\r\n{} \t\r\n", want: true},
	{name: "vertical tab", in: "\v{}", want: false},
	{name: "form feed", in: "{}\f", want: false},
	{name: "no-break space", in: "\u00a0{}", want: false},
	{name: "latin-1 no-break space", in: "\xa0{}", want: false},
	{name: "nul after value", in: "{}\x00", want: false},
	{name: "space between tokens", in: "{ \"a\" \t:\r\n[ 1 , 2 ] , \"b\" : { } }", want: true},
	{name: "form feed between tokens", in: "[1,\f2]", want: false},

	// Containers.
	{name: "empty object", in: "{}", want: true},
	{name: "empty array", in: "[]", want: true},
	{name: "nested mix", in: `{"a":[{"b":[[],{}]},null,{"c":{"d":[1,"x",true]}}]}`, want: true},
	{name: "array of empties", in: `[[],[[]],{},[{}]]`, want: true},
	{name: "empty key", in: `{"":1}`, want: true},
	{name: "duplicate keys", in: `{"a":1,"a":2}`, want: true},
	{name: "trailing comma in array", in: "[1,]", want: false},
	{name: "trailing comma in object", in: `{"a":1,}`, want: false},
	{name: "leading comma", in: "[,1]", want: false},
	{name: "double comma", in: "[1,,2]", want: false},
	{name: "lone comma", in: "[,]", want: false},
	{name: "missing comma", in: "[1 2]", want: false},
	{name: "unclosed array", in: "[1,2", want: false},
	{name: "unclosed object", in: `{"a":1`, want: false},
	{name: "unclosed after comma", in: "[1,", want: false},
	{name: "unopened close", in: "]", want: false},
	{name: "extra close", in: "[]]", want: false},
	{name: "mismatched close", in: "[}", want: false},
	{name: "mismatched close in object", in: `{"a":[1}]`, want: false},
	{name: "mismatched nested", in: `[{]}`, want: false},
	{name: "number key", in: `{1:2}`, want: false},
	{name: "literal key", in: `{true:1}`, want: false},
	{name: "bare key", in: `{a:1}`, want: false},
	{name: "single-quoted key", in: `{'a':1}`, want: false},
	{name: "object key", in: `{{}:1}`, want: false},
	{name: "missing colon", in: `{"a" 1}`, want: false},
	{name: "missing value", in: `{"a":}`, want: false},
	{name: "double colon", in: `{"a"::1}`, want: false},
	{name: "key without value", in: `{"a"}`, want: false},
	{name: "comma instead of colon", in: `{"a",1}`, want: false},
	{name: "member in array", in: `["a":1]`, want: false},
	{name: "key after comma missing", in: `{"a":1,2}`, want: false},

	// Top level.
	{name: "two values", in: "1 2", want: false},
	{name: "two objects", in: "{}{}", want: false},
	{name: "two strings", in: `"a""b"`, want: false},
	{name: "value then comma", in: "1,", want: false},
	{name: "top-level string", in: `"x"`, want: true},
	{name: "top-level null", in: "null", want: true},

	// Literals.
	{name: "true", in: "true", want: true},
	{name: "false", in: "false", want: true},
	{name: "null", in: " null ", want: true},
	{name: "truncated true", in: "tru", want: false},
	{name: "truncated null", in: "nul", want: false},
	{name: "truncated false", in: "fals", want: false},
	{name: "truncated in array", in: "[tru]", want: false},
	{name: "literal with suffix", in: "falsey", want: false},
	{name: "literal run together", in: "truenull", want: false},
	{name: "capitalised", in: "True", want: false},
	{name: "nan", in: "NaN", want: false},
	{name: "infinity", in: "[Infinity]", want: false},
	{name: "undefined", in: "undefined", want: false},

	// Numbers.
	{name: "zero", in: "0", want: true},
	{name: "leading zero", in: "01", want: false},
	{name: "leading zeros in array", in: "[00]", want: false},
	{name: "minus alone", in: "-", want: false},
	{name: "minus zero", in: "-0", want: true},
	{name: "minus leading zero", in: "-01", want: false},
	{name: "plus sign", in: "+1", want: false},
	{name: "double minus", in: "--1", want: false},
	{name: "minus space", in: "- 1", want: false},
	{name: "trailing dot", in: "1.", want: false},
	{name: "leading dot", in: ".5", want: false},
	{name: "fraction", in: "0.5", want: true},
	{name: "minus fraction", in: "-12.0034", want: true},
	{name: "two dots", in: "1.2.3", want: false},
	{name: "dot then exponent", in: "1.e5", want: false},
	{name: "exponent without digits", in: "1e", want: false},
	{name: "exponent sign without digits", in: "1e+", want: false},
	{name: "capital exponent", in: "1E-7", want: true},
	{name: "exponent plus", in: "1e+7", want: true},
	{name: "exponent leading zeros", in: "1e007", want: true},
	{name: "fraction and exponent", in: "-0.0e-0", want: true},
	{name: "huge exponent", in: "1e999999999999999999999999", want: true},
	{name: "huge integer", in: strings.Repeat("9", 400), want: true},
	{name: "long fraction", in: "0." + strings.Repeat("1", 400), want: true},
	{name: "double exponent", in: "1e5e5", want: false},
	{name: "exponent with dot", in: "1e5.0", want: false},
	{name: "hex", in: "0x10", want: false},
	{name: "number then letter", in: "[1a]", want: false},
	{name: "number in object", in: `{"n":-1.5E+3}`, want: true},
	{name: "full-width digit", in: "\uff11", want: false},

	// Strings.
	{name: "empty string", in: `""`, want: true},
	{name: "unterminated string", in: `"abc`, want: false},
	{name: "unterminated long string", in: `"` + strings.Repeat("a", 100), want: false},
	{name: "unterminated after escape", in: `"a\"`, want: false},
	{name: "backslash at end", in: `"a\`, want: false},
	{name: "single quotes", in: `'a'`, want: false},
	{name: "every simple escape", in: `"\"\\\/\b\f\n\r\t"`, want: true},
	{name: "unicode escapes", in: `"\u0000\u00e9\uFFFF\uD83D\uDE00\uabcd\uABCD"`, want: true},
	{name: "lone surrogate escape", in: `"\uD800"`, want: true},
	{name: "bad escape x", in: `"\x41"`, want: false},
	{name: "bad escape a", in: `"\a"`, want: false},
	{name: "bad escape 0", in: `"\0"`, want: false},
	{name: "bad escape U", in: `"\U0041"`, want: false},
	{name: "escaped apostrophe", in: `"\'"`, want: false},
	{name: "escaped space", in: `"\ "`, want: false},
	{name: "short unicode escape", in: `"\u12"`, want: false},
	{name: "short unicode escape at end", in: `"\u12`, want: false},
	{name: "non-hex in unicode escape", in: `"\u12G4"`, want: false},
	{name: "non-hex g", in: `"\u00g0"`, want: false},
	{name: "escaped backslash before quote", in: `"\\"`, want: true},
	{name: "escape in key", in: `{"a\nb":1,"\u0041":2}`, want: true},
	{name: "bad escape in key", in: `{"\q":1}`, want: false},
	{name: "raw nul", in: "\"a\x00b\"", want: false},
	{name: "raw tab", in: "\"a\tb\"", want: false},
	{name: "raw line feed", in: "\"a\nb\"", want: false},
	{name: "raw unit separator", in: "\"\x1f\"", want: false},
	{name: "raw control after eight bytes", in: "\"abcdefghij\x01\"", want: false},
	{name: "raw control in key", in: "{\"\x05\":1}", want: false},
	{name: "delete", in: "\"\x7f\"", want: true},
	{name: "space", in: `" "`, want: true},
	{name: "valid utf-8", in: `"héllo, 世界 😀"`, want: true},
	{name: "invalid utf-8 in string", in: "\"\xff\xfe\x80\"", want: true},
	{name: "truncated utf-8 in string", in: "\"\xe4\xb8\"", want: true},
	{name: "surrogate as utf-8 in string", in: "\"\xed\xa0\x80\"", want: true},
	{name: "invalid utf-8 outside strings", in: "[\xff]", want: false},
	{name: "utf-8 outside strings", in: "[é]", want: false},
	{name: "high bytes in long string", in: "\"" + strings.Repeat("\x80\xff\xc0", 20) + "\"", want: true},
	{name: "quote at each offset", in: `["a","ab","abc","abcd","abcde","abcdef","abcdefg","abcdefgh","abcdefghi"]`, want: true},
	{name: "escape across word", in: `"abcdefg\"hijklmnop\\qrstuvw\u0041xyz"`, want: true},
}

// deepCases are nestings of each depth, well formed or not, to check the
// depth limit and the stack of open containers across its word boundaries.
func deepCases(depths ...int) []struct{ name, in string } {
	var cases []struct{ name, in string }
	for _, d := range depths {
		// Arrays and objects alternate, so that every level's closer
		// depends on the right bit of the stack.
		mixed := strings.Repeat(`[{"k":`, d/2) + strings.Repeat("[", d%2) + "1" +
			strings.Repeat("]", d%2) + strings.Repeat("}]", d/2)
		cases = append(cases,
			struct{ name, in string }{
				fmt.Sprintf("arrays %d deep", d),
				strings.Repeat("[", d) + strings.Repeat("]", d),
			},
			struct{ name, in string }{
				fmt.Sprintf("objects %d deep", d),
				strings.Repeat(`{"a":`, d-1) + "{}" + strings.Repeat("}", d-1),
			},
			struct{ name, in string }{fmt.Sprintf("mixed %d deep", d), mixed},
			struct{ name, in string }{
				fmt.Sprintf("mixed %d deep, closers swapped", d),
				strings.Map(func(r rune) rune {
					switch r {
					case ']':
						return '}'
					case '}':
						return ']'
					}
					return r
				}, mixed),
			},
			struct{ name, in string }{
				fmt.Sprintf("mixed %d deep, with a second member", d),
				mixed[:len(mixed)-d/2*2] + `,"m":2` + mixed[len(mixed)-d/2*2:],
			},
			struct{ name, in string }{
				fmt.Sprintf("arrays %d deep, unclosed", d),
				strings.Repeat("[", d),
			},
		)
	}
	return cases
}

func TestValidJSON(t *testing.T) {
	t.Parallel()
	for _, tc := range validJSONCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, json.Valid([]byte(tc.in)), "encoding/json disagrees with the table")
			assert.Equal(t, tc.want, validJSON([]byte(tc.in)))
		})
	}
}

func TestValidJSONDepth(t *testing.T) {
	t.Parallel()
	depths := []int{1, 2, 63, 64, 65, 66, 128, 129, 256, 257, 258, 1000,
		maxJSONDepth - 1, maxJSONDepth, maxJSONDepth + 1, maxJSONDepth + 2}
	for _, tc := range deepCases(depths...) {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, json.Valid([]byte(tc.in)), validJSON([]byte(tc.in)))
		})
	}
	// The limit itself, as encoding/json has it: the cases above would
	// agree with a validator that had no limit if encoding/json lost its.
	assert.True(t, validJSON([]byte(strings.Repeat("[", maxJSONDepth)+strings.Repeat("]", maxJSONDepth))))
	assert.False(t, validJSON([]byte(strings.Repeat("[", maxJSONDepth+1)+strings.Repeat("]", maxJSONDepth+1))))
	assert.False(t, validJSON([]byte(strings.Repeat(`{"a":`, maxJSONDepth)+"{}"+strings.Repeat("}", maxJSONDepth))))
}

// TestValidJSONAllocs is not parallel: AllocsPerRun counts the allocations
// of the whole process.
func TestValidJSONAllocs(t *testing.T) {
	const depth = 50 // an object and an array per repetition
	body := []byte(strings.Repeat(`{"a":[1,"x",`, depth/2) + "null" + strings.Repeat("]}", depth/2))
	require.True(t, json.Valid(body))
	require.True(t, validJSON(body))
	allocs := testing.AllocsPerRun(100, func() {
		if !validJSON(body) {
			t.Fatal("valid body rejected")
		}
	})
	assert.Zero(t, allocs)
}

func FuzzValidJSON(f *testing.F) {
	for _, tc := range validJSONCases {
		f.Add([]byte(tc.in))
	}
	// Deeper seeds would slow the fuzzer down for little: the depth limit
	// is tested above.
	for _, tc := range deepCases(1, 2, 63, 64, 65, 129, 257) {
		f.Add([]byte(tc.in))
	}
	f.Add(apiResponse(1))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, encoding/json says %v", b, got, want)
		}
	})
}

// apiResponse returns a JSON object in the shape of a list endpoint's
// answer, with n pages of 15 items; one page is about 1.7 KB.
func apiResponse(n int) []byte {
	var sb strings.Builder
	sb.WriteString(`{"object":"list","url":"/v1/orders","has_more":true,"data":[`)
	for i := range 15 * n {
		if i > 0 {
			sb.WriteByte(',')
		}
		memo := "null"
		if i%5 == 0 {
			memo = `"ships \"as is\"\n\u00e9"`
		}
		fmt.Fprintf(&sb, `{"id":"o_%06d","total":%d,"fee":%d.25,"paid":%t,`+
			`"buyer":{"name":"Zoë","tags":["vip"]},"memo":%s}`,
			i, 1000+i*37, i%10, i%2 == 0, memo)
	}
	sb.WriteString(`]}`)
	return []byte(sb.String())
}

func BenchmarkValidJSON(b *testing.B) {
	small := []byte(`{"id":42}`)
	page := apiResponse(1)
	var large []byte
	for n := 1; len(large) < 64<<10; n++ {
		large = apiResponse(n)
	}
	for _, body := range []struct {
		name string
		b    []byte
	}{
		{"9B", small},
		{fmt.Sprintf("%dB", len(page)), page},
		{fmt.Sprintf("%dKB", len(large)>>10), large},
	} {
		if !json.Valid(body.b) {
			b.Fatalf("%s: benchmark body is not valid JSON", body.name)
		}
		for _, v := range []struct {
			name  string
			valid func([]byte) bool
		}{
			{"encoding_json", json.Valid},
			{"validJSON", validJSON},
		} {
			b.Run(body.name+"/"+v.name, func(b *testing.B) {
				b.SetBytes(int64(len(body.b)))
				b.ReportAllocs()
				for b.Loop() {
					if !v.valid(body.b) {
						b.Fatal("valid body rejected")
					}
				}
			})
		}
	}
}
