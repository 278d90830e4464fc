package config

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/goccy/go-yaml/ast"
)

// UnmarshalYAML reads a duration like "30s"; a bare number is seconds.
func (d *Duration) UnmarshalYAML(n ast.Node) error {
	s := n.String()
	if sn, ok := n.(*ast.StringNode); ok {
		s = sn.Value // quoted in either style, or plain
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		*d = Duration(time.Duration(f * float64(time.Second)))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return &nodeError{node: n, msg: fmt.Sprintf("%q is not a duration; write it like 30s, 2m or 1h30m", s)}
	}
	*d = Duration(v)
	return nil
}

// nodeError is a decode error found by one of drover's own unmarshalers,
// which know the node and so its line.
type nodeError struct {
	node ast.Node
	msg  string
}

func (e *nodeError) Error() string { return e.msg }

// MarshalJSON writes the duration as a string like "30s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration written by MarshalJSON.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
