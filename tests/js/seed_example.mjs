// The seed document's JavaScript example, unchanged but for the base URL and the model name.
const BASE = process.env.OLLABRIDGE_URL;
const MODEL = process.env.OLLABRIDGE_MODEL;

const response = await fetch(
  `${BASE}/ollama/v1/chat/completions`,
  {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      model: MODEL,
      messages: [{ role: "user", content: "Hello!" }],
      stream: false,
      max_tokens: 8,
    }),
  }
);
const data = await response.json();
console.log(data.choices[0].message.content);
console.error(JSON.stringify({ status: response.status, data }));
