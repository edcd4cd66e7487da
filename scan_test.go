package keystore

import "testing"

// A column scanned again, as VerifyKey does after a failed spend, must not
// keep or merge into the previous value.
func TestJSONColumnRescanResets(t *testing.T) {
	var meta jsonColumn[map[string]any]
	if err := meta.Scan([]byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := meta.Scan([]byte(`{"b":2}`)); err != nil || len(meta.V) != 1 || meta.V["b"] != 2.0 {
		t.Fatalf("rescan merged: %v, %v", meta.V, err)
	}
	if err := meta.Scan(nil); err != nil || meta.V != nil {
		t.Fatalf("NULL after a value left %v, %v", meta.V, err)
	}
}
