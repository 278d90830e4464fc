package config

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml/ast"
)

// Amount is a number of hosts, written as a count ("2") or as a percent of
// the environment's hosts ("25%"). The zero Amount is unset.
type Amount struct {
	N       int  // the count, or the percent when Percent is set
	Percent bool // N is a percent of the environment's hosts
}

// Count is an Amount of n hosts.
func Count(n int) Amount { return Amount{N: n} }

// Percent is an Amount of p percent of the hosts.
func Percent(p int) Amount { return Amount{N: p, Percent: true} }

// IsZero reports whether the amount is unset or zero.
func (a Amount) IsZero() bool { return a.N == 0 }

// Ceil is the amount out of total hosts, a percent rounded up.
func (a Amount) Ceil(total int) int {
	if !a.Percent {
		return a.N
	}
	return (a.N*total + 99) / 100
}

// Floor is the amount out of total hosts, a percent rounded down.
func (a Amount) Floor(total int) int {
	if !a.Percent {
		return a.N
	}
	return a.N * total / 100
}

// String writes the amount as drover.yml does: "2" or "25%".
func (a Amount) String() string {
	if a.Percent {
		return strconv.Itoa(a.N) + "%"
	}
	return strconv.Itoa(a.N)
}

// ParseAmount reads "2" or "25%".
func ParseAmount(s string) (Amount, error) {
	s = strings.TrimSpace(s)
	num, pct := strings.CutSuffix(s, "%")
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n < 0 {
		return Amount{}, fmt.Errorf("%q is not a number of hosts; write a count like 2 or a percent like 25%%", s)
	}
	if pct && n > 100 {
		return Amount{}, fmt.Errorf("%q is more than 100%% of the hosts", s)
	}
	return Amount{N: n, Percent: pct}, nil
}

// UnmarshalYAML reads a count (2, "2") or a percent ("25%").
func (a *Amount) UnmarshalYAML(n ast.Node) error {
	s := n.String()
	if sn, ok := n.(*ast.StringNode); ok {
		s = sn.Value
	}
	v, err := ParseAmount(s)
	if err != nil {
		return &nodeError{node: n, msg: err.Error()}
	}
	*a = v
	return nil
}

// MarshalJSON writes a count as a number and a percent as "25%".
func (a Amount) MarshalJSON() ([]byte, error) {
	if a.Percent {
		return json.Marshal(a.String())
	}
	return json.Marshal(a.N)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (a *Amount) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int
		if err := json.Unmarshal(b, &n); err != nil {
			return err
		}
		s = strconv.Itoa(n)
	}
	v, err := ParseAmount(s)
	if err != nil {
		return err
	}
	*a = v
	return nil
}
