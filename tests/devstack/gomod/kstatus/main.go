// kstatus reads Kubernetes objects (a JSON array, or a List) on standard input and prints
// one JSON line per object with what the kstatus library (sigs.k8s.io/cli-utils
// pkg/kstatus/status) computes for it: {"status": "Current", "message": "..."}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var objects []json.RawMessage
	if err := json.Unmarshal(data, &objects); err != nil {
		fail(fmt.Errorf("standard input must be a JSON array of objects: %w", err))
	}
	out := json.NewEncoder(os.Stdout)
	for _, raw := range objects {
		// Unstructured's own decoder keeps integers int64, as the API machinery reads them.
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(raw); err != nil {
			fail(err)
		}
		result, err := status.Compute(object)
		if err != nil {
			fail(err)
		}
		if err := out.Encode(verdict{Status: result.Status.String(), Message: result.Message}); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}
