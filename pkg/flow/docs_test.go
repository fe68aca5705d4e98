package flow

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDocsMatchTables keeps the mermaid diagrams of docs/flow.md equal to
// the transition tables.
func TestDocsMatchTables(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../docs/flow.md")
	require.NoError(t, err)
	blocks := regexp.MustCompile("(?s)```mermaid\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	require.Len(t, blocks, 3, "deployment, promotion and flow diagrams")

	edges := func(block string) []string {
		var out []string
		for _, line := range strings.Split(block, "\n") {
			from, to, ok := strings.Cut(strings.TrimSpace(line), " --> ")
			if ok && from != "[*]" && to != "[*]" {
				out = append(out, from+"->"+to)
			}
		}
		slices.Sort(out)
		return out
	}
	var dep []string
	for from, tos := range DeploymentMoves() {
		for _, to := range tos {
			dep = append(dep, string(from)+"->"+string(to))
		}
	}
	slices.Sort(dep)
	require.Equal(t, dep, edges(blocks[0][1]), "deployment diagram")
	var fl []string
	for from, tos := range FlowMoves() {
		for _, to := range tos {
			fl = append(fl, string(from)+"->"+string(to))
		}
	}
	slices.Sort(fl)
	require.Equal(t, fl, edges(blocks[2][1]), "flow diagram")
	var pr []string
	for from, tos := range PromotionMoves() {
		for _, to := range tos {
			pr = append(pr, string(from)+"->"+string(to))
		}
	}
	slices.Sort(pr)
	require.Equal(t, pr, edges(blocks[1][1]), "promotion diagram")
}
