package ingest

import (
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/api"
)

// TestDocsListEveryErrorCode keeps docs/api.md's error table and
// pkg/api's in step.
func TestDocsListEveryErrorCode(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../docs/api.md")
	require.NoError(t, err)
	for code, status := range api.Codes() {
		require.Contains(t, string(b), fmt.Sprintf("| `%s` | %d |", code, status), "docs/api.md lacks error code %s", code)
	}
}
