// A fast HTTP/1.1 upstream for the data-path benchmark: reads the request body and answers 200 with a
// small fixed OpenAI-style JSON body, so that what is measured is the proxy in front of it.
//
//	upstream -listen 127.0.0.1:PORT
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
)

var reply = []byte(`{"id":"bench","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "HTTP address")
	flag.Parse()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	length := strconv.Itoa(len(reply))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		_, _ = w.Write(reply)
	})
	fmt.Printf("listening %s\n", lis.Addr())
	log.Fatal(http.Serve(lis, handler))
}
