// moe-compare: every router policy trains the same small model from the same initialisation,
// data order and seed, and one table compares how they learn (docs/compare.md).
//
//   moe-compare [--task text|synthetic] [--text FILE] [--steps N] [--seeds N] [--routers a,b]
//               [--json [FILE]] [--plots DIR] [--quick] [--threads N] ...   (--help lists all)
//   moe-compare --throughput [--tokens T] [--d-model D] ...   (the forward-only speed table)
//
// The default: a character-level language model on the licence texts every Debian machine
// has (/usr/share/common-licenses), 600 Adam steps of 128 windows per router, one seed.
#include "compare/policies.hpp"
#include "compare/report.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace cmp = moe::examples::compare;
using moe::Index;
using moe::RowMatrix;
using S = cmp::S;

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

moe::WeightType weight_type(const std::string& name) {
  for (const auto t : {moe::WeightType::f32, moe::WeightType::bf16, moe::WeightType::q8_0, moe::WeightType::q4_0,
                       moe::WeightType::q4_k})
    if (name == moe::weight_type_name(t)) return t;
  throw std::invalid_argument("--weight-type: expected f32, bf16, q8_0, q4_0 or q4_k, got '" + name + "'");
}

void usage(std::FILE* out, const char* argv0) {
  std::fprintf(out,
               "usage: %s [options]\n"
               "Trains every router policy on one task and compares how they learn (docs/compare.md).\n"
               "  --task text|synthetic   text: character-level LM (default); synthetic: mixture-of-clusters regression\n"
               "  --text FILE|DIR         the text to train on (default %s); the last 10%% is held out\n"
               "  --steps N               Adam steps per router (default 600)\n"
               "  --batch B               inputs per step (default 128; a multiple of --sequence)\n"
               "  --sequence L            rows per sequence for Soft MoE, conv and recurrent experts (default 64)\n"
               "  --eval-every N          steps between held-out evaluations (default 50)\n"
               "  --eval-tokens N         held-out inputs per evaluation (default 4096)\n"
               "  --layers N              MoE blocks (default 1)\n"
               "  --context C             text: characters in the window (default 16)\n"
               "  --embed E               text: width of a character's embedding; d = C x E (default 8)\n"
               "  --d-model D             synthetic: model width (default 64)\n"
               "  --experts E --top-k K --d-ff F   the MoE blocks (default 8, 2, 128)\n"
               "  --lr X --aux X --z X    Adam learning rate, load-balancing and z-loss weights (3e-3, 1e-2, 1e-3)\n"
               "  --seeds N               repeat with seeds S..S+N-1, report mean and standard deviation (default 1)\n"
               "  --seed S                the first seed (default 1)\n"
               "  --routers a,b,...       only these (--list names them; the baselines are dense and frozen-random)\n"
               "  --threads N             thread pool size (default: the machine's cores); results do not depend on it\n"
               "  --json [FILE]           every figure and curve point as JSON (stdout without FILE)\n"
               "  --plots DIR             PNGs of the curves (needs python3-matplotlib); DIR/compare.json too\n"
               "  --plot-router NAME      the router of the load heat map (default softmax-topk)\n"
               "  --weight-type T         the experts' weights in evaluation and --throughput forwards: f32 (default),\n"
               "                          bf16, q8_0, q4_0 or q4_k; training stays float (docs/quantization.md)\n"
               "  --quick                 a seconds-long smoke run (small model, 30 steps)\n"
               "  --list                  the policies and their rules\n"
               "  --throughput            instead: the forward-only speed table at a larger shape, options\n"
               "                          --tokens T --d-model D --d-ff F --experts E --top-k K --reps R (4096, 256,\n"
               "                          512, 16, 2, 3)\n",
               argv0, cmp::default_corpus);
}

struct Options {
  bool throughput = false;
  bool quick = false;
  std::string task = "text";
  std::string text = cmp::default_corpus;
  cmp::TrainConfig train;
  Index d_model_synthetic = 64;
  Index context = 16;
  Index seeds = 1;
  std::uint64_t seed = 1;
  Index threads = 0;
  std::vector<std::string> routers;
  bool want_json = false;
  std::optional<std::string> json_path;
  std::optional<std::string> plots;
  std::string plot_router = "softmax-topk";
  // --throughput
  Index tokens = 4096, tp_d_model = 256, tp_d_ff = 512, tp_experts = 16, tp_top_k = 2;
  int reps = 3;
  // Which of the shared options were given (--quick and --throughput keep the others).
  std::vector<std::string> given;
  [[nodiscard]] bool has(const std::string& o) const { return std::find(given.begin(), given.end(), o) != given.end(); }
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument("option " + a + " needs a value");
      return argv[++i];
    };
    const auto integer = [&]() -> Index {
      const std::string v = value();
      std::size_t used = 0;
      const long n = std::stol(v, &used);
      if (used != v.size()) throw std::invalid_argument(a + ": expected an integer, got '" + v + "'");
      return n;
    };
    const auto real = [&]() -> double {
      const std::string v = value();
      std::size_t used = 0;
      const double x = std::stod(v, &used);
      if (used != v.size() || !std::isfinite(x)) throw std::invalid_argument(a + ": expected a number, got '" + v + "'");
      return x;
    };
    o.given.push_back(a);
    if (a == "--task") o.task = value();
    else if (a == "--text") o.text = value();
    else if (a == "--steps") o.train.steps = integer();
    else if (a == "--batch") o.train.batch = integer();
    else if (a == "--sequence") o.train.block.sequence_length = integer();
    else if (a == "--eval-every") o.train.eval_every = integer();
    else if (a == "--eval-tokens") o.train.eval_tokens = integer();
    else if (a == "--layers") o.train.model.layers = integer();
    else if (a == "--context") o.context = integer();
    else if (a == "--embed") o.train.model.embed = integer();
    else if (a == "--d-model") o.d_model_synthetic = o.tp_d_model = integer();
    else if (a == "--experts") o.train.block.experts = o.tp_experts = integer();
    else if (a == "--top-k") o.train.block.top_k = o.tp_top_k = integer();
    else if (a == "--d-ff") o.train.block.d_ff = o.tp_d_ff = integer();
    else if (a == "--lr") o.train.block.lr = real();
    else if (a == "--aux") o.train.block.aux = real();
    else if (a == "--z") o.train.block.z = real();
    else if (a == "--seeds") o.seeds = integer();
    else if (a == "--seed") o.seed = static_cast<std::uint64_t>(integer());
    else if (a == "--threads") o.threads = integer();
    else if (a == "--routers") o.routers = split(value());
    else if (a == "--plots") o.plots = value();
    else if (a == "--plot-router") o.plot_router = value();
    else if (a == "--weight-type") o.train.block.weight_type = weight_type(value());
    else if (a == "--quick") o.quick = true;
    else if (a == "--throughput") o.throughput = true;
    else if (a == "--tokens") o.tokens = integer();
    else if (a == "--reps") o.reps = static_cast<int>(integer());
    else if (a == "--json") {
      o.want_json = true;
      if (i + 1 < argc && argv[i + 1][0] != '-') o.json_path = argv[++i];
    } else if (a == "--list") {
      for (const auto& p : cmp::policies())
        std::printf("%-23s %s%s\n", p.name.c_str(), p.rule.c_str(), p.baseline ? " [baseline]" : "");
      std::exit(0);
    } else if (a == "--help" || a == "-h") {
      usage(stdout, argv[0]);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown option " + a);
    }
  }
  if (o.quick) {
    // Seconds: a small model, few steps; options given explicitly still win.
    auto& t = o.train;
    if (!o.has("--steps")) t.steps = 30;
    if (!o.has("--batch")) t.batch = 64;
    if (!o.has("--sequence")) t.block.sequence_length = 32;
    if (!o.has("--eval-every")) t.eval_every = 10;
    if (!o.has("--eval-tokens")) t.eval_tokens = 512;
    if (!o.has("--context")) o.context = 8;
    if (!o.has("--embed")) t.model.embed = 4;
    if (!o.has("--d-model")) o.d_model_synthetic = 32;
    if (!o.has("--experts")) t.block.experts = 4;
    if (!o.has("--d-ff")) t.block.d_ff = 32;
  }
  const auto positive = [](Index v, const char* name) {
    if (v < 1) throw std::invalid_argument(std::string(name) + ": expected >= 1, got " + std::to_string(v));
  };
  const auto& t = o.train;
  positive(t.steps, "--steps");
  positive(t.batch, "--batch");
  positive(t.block.sequence_length, "--sequence");
  positive(t.eval_every, "--eval-every");
  positive(t.eval_tokens, "--eval-tokens");
  positive(t.model.layers, "--layers");
  positive(o.context, "--context");
  positive(t.model.embed, "--embed");
  positive(o.d_model_synthetic, "--d-model");
  positive(t.block.experts, "--experts");
  positive(t.block.d_ff, "--d-ff");
  positive(o.seeds, "--seeds");
  positive(o.tokens, "--tokens");
  positive(o.reps, "--reps");
  if (o.threads < 0) throw std::invalid_argument("--threads: expected >= 0, got " + std::to_string(o.threads));
  if (t.block.top_k < 1 || t.block.top_k > t.block.experts)
    throw std::invalid_argument("--top-k: expected 1.." + std::to_string(t.block.experts) + " (--experts), got " +
                                std::to_string(t.block.top_k));
  if (t.batch % t.block.sequence_length != 0)
    throw std::invalid_argument("--batch: expected a multiple of --sequence = " + std::to_string(t.block.sequence_length) +
                                ", got " + std::to_string(t.batch));
  if (!o.throughput && t.eval_tokens < t.block.sequence_length)
    throw std::invalid_argument("--eval-tokens: expected >= --sequence = " + std::to_string(t.block.sequence_length) +
                                ", got " + std::to_string(t.eval_tokens));
  if (o.task != "text" && o.task != "synthetic")
    throw std::invalid_argument("--task: expected text or synthetic, got '" + o.task + "'");
  if (!(t.block.lr > 0)) throw std::invalid_argument("--lr: expected > 0");
  return o;
}

std::vector<cmp::Policy> selected(const Options& o) {
  auto all = cmp::policies();
  if (o.routers.empty()) return all;
  std::vector<cmp::Policy> out;
  for (const auto& name : o.routers) {
    auto it = std::find_if(all.begin(), all.end(), [&](const cmp::Policy& p) { return p.name == name; });
    if (it == all.end()) throw std::invalid_argument("unknown router '" + name + "' (--list shows them)");
    out.push_back(*it);
  }
  return out;
}

void emit_json(const nlohmann::json& j, const Options& o) {
  if (o.json_path) {
    std::ofstream out(*o.json_path);
    out << j.dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write " + *o.json_path);
    std::fprintf(stderr, "moe-compare: wrote %s\n", o.json_path->c_str());
  } else {
    std::cout << j.dump(2) << "\n";
  }
}

// ---------------------------------------------------------------------------------------
// --throughput: forward only, inference mode, one larger shape.

int run_throughput(const Options& o, moe::ThreadPool* pool) {
  cmp::BlockConfig c;
  c.d = o.tp_d_model;
  c.d_ff = o.tp_d_ff;
  c.experts = o.tp_experts;
  c.top_k = o.tp_top_k;
  c.vocab = 32000;
  c.sequence_length = o.tokens % 256 == 0 ? 256 : o.tokens;
  c.weight_type = o.train.block.weight_type;
  if (c.top_k < 1 || c.top_k > c.experts)
    throw std::invalid_argument("--top-k: expected 1.." + std::to_string(c.experts) + ", got " + std::to_string(c.top_k));
  // Tokens near one of 32 cluster centres; the ids follow the cluster (as the synthetic task's).
  RowMatrix<S> centres(32, c.d), x(o.tokens, c.d);
  moe::examples::fill_normal(centres, o.seed + 100, 1.0);
  moe::examples::fill_normal(x, o.seed + 101, 0.3);
  std::vector<std::int64_t> token(static_cast<std::size_t>(o.tokens)), modality(token.size()), task(token.size());
  const moe::CounterRng rng(o.seed + 5, 0);
  for (Index t = 0; t < o.tokens; ++t) {
    const Index k = (t * 7919) % 32;
    x.row(t) += centres.row(k);
    token[static_cast<std::size_t>(t)] = std::int64_t(rng.bits(static_cast<std::uint64_t>(t), 0) % 32000u);
    modality[static_cast<std::size_t>(t)] = k % cmp::num_modalities;
    task[static_cast<std::size_t>(t)] = k % cmp::num_tasks;
  }
  moe::ForwardContext ctx;
  ctx.pool = pool;
  ctx.sequence_length = c.sequence_length;
  ctx.token_ids = token;
  ctx.modality_ids = modality;
  ctx.task_ids = task;
  std::fprintf(stderr,
               "moe-compare --throughput: %ld tokens, d_model %ld, d_ff %ld, %ld experts, top-%ld, %d reps, kernels %s, "
               "expert weights %s\n",
               long(o.tokens), long(c.d), long(c.d_ff), long(c.experts), long(c.top_k), o.reps,
               moe::kernels::arch_name(), moe::weight_type_name(c.weight_type));
  nlohmann::json j;
  j["workload"] = {{"tokens", o.tokens}, {"d_model", c.d},   {"d_ff", c.d_ff}, {"experts", c.experts},
                   {"top_k", c.top_k},   {"reps", o.reps},   {"seed", o.seed}, {"arch", moe::kernels::arch_name()},
                   {"weight_type", moe::weight_type_name(c.weight_type)}};
  std::string table;
  char line[512];
  std::snprintf(line, sizeof line, "%-22s %10s %8s %8s %8s %9s %8s %8s %8s  %s\n", "router", "tokens/s", "rows/tok",
                "exp/tok", "load CV", "max/mean", "dropped", "aux", "z loss", "rule");
  table += line;
  const auto opt = [](const std::optional<double>& v) {
    char b[32];
    if (!v) return std::string("     n/a");
    std::snprintf(b, sizeof b, "%8.4f", *v);
    return std::string(b);
  };
  const auto list = selected(o);
  for (std::size_t i = 0; i < list.size(); ++i) {
    std::fprintf(stderr, "[%zu/%zu] %s ...\n", i + 1, list.size(), list[i].name.c_str());
    const auto block = list[i].make(c);
    if (!block->set_inference_weights(c.weight_type))
      std::fprintf(stderr, "  %s: float experts (its experts have no %s form)\n", list[i].name.c_str(),
                   moe::weight_type_name(c.weight_type));
    RowMatrix<S> y;
    block->forward(x, y, ctx);  // warm-up
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < o.reps; ++r) block->forward(x, y, ctx);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const cmp::Routed routed = block->routed();
    const auto [cv, mm] = cmp::load_balance(routed.load);
    const double tps = double(o.tokens) * o.reps / seconds;
    const double rows = double(routed.rows) / double(o.tokens);
    std::snprintf(line, sizeof line, "%-22s %10.0f %8.2f %s %8.3f %9.2f %7.1f%% %s %s  %s\n", list[i].name.c_str(), tps,
                  rows, opt(routed.experts_per_token).c_str(), cv, mm, 100.0 * routed.dropped, opt(routed.aux).c_str(),
                  opt(routed.z).c_str(), list[i].rule.c_str());
    table += line;
    j["results"].push_back({{"router", list[i].name},
                            {"rule", list[i].rule},
                            {"tokens_per_s", tps},
                            {"load_cv", cv},
                            {"load_max_over_mean", mm},
                            {"dropped_fraction", routed.dropped},
                            {"expert_rows_per_token", rows},
                            {"experts_per_token", cmp::opt_json(routed.experts_per_token)},
                            {"aux_loss", cmp::opt_json(routed.aux)},
                            {"z_loss", cmp::opt_json(routed.z)}});
  }
  if (o.want_json) {
    emit_json(j, o);
    if (!o.json_path) return 0;
  }
  std::fputs(table.c_str(), stdout);
  std::printf(
      "rows/tok = expert rows computed per token (compute); exp/tok = experts a token ran through, mean (1..k under\n"
      "top-p and threshold-skip); load = rows per expert after capacity; dropped = tokens no expert processed;\n"
      "aux = load-balancing loss normalised to 1 at perfect balance; z = router z-loss\n");
  return 0;
}

// ---------------------------------------------------------------------------------------
// Plots: scripts/compare_plots.py over the JSON, when python3 and matplotlib are there.

std::string plot_script() {
  if (const char* env = std::getenv("MOE_COMPARE_PLOT_SCRIPT")) return env;
#ifdef MOE_COMPARE_PLOT_SCRIPT
  return MOE_COMPARE_PLOT_SCRIPT;
#else
  return "scripts/compare_plots.py";
#endif
}

std::string shell_quoted(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

void make_plots(const nlohmann::json& j, const Options& o) {
  namespace fs = std::filesystem;
  const fs::path dir = *o.plots;
  fs::create_directories(dir);
  const fs::path json = dir / "compare.json";
  std::ofstream(json) << j.dump(1) << "\n";
  std::fprintf(stderr, "moe-compare: wrote %s\n", json.c_str());
  const std::string script = plot_script();
  if (!fs::is_regular_file(script)) {
    std::fprintf(stderr, "moe-compare: plots skipped: no plotting script at %s (set MOE_COMPARE_PLOT_SCRIPT)\n",
                 script.c_str());
    return;
  }
  // The first Python that has matplotlib: $MOE_PYTHON, python3 on the PATH, Debian's own
  // (a python3 from pyenv or a venv on the PATH does not see Debian's python3-matplotlib).
  std::string python;
  std::vector<std::string> candidates = {"python3", "/usr/bin/python3"};
  if (const char* env = std::getenv("MOE_PYTHON")) candidates.insert(candidates.begin(), env);
  for (const auto& candidate : candidates)
    if (std::system((shell_quoted(candidate) + " -c 'import matplotlib' >/dev/null 2>&1").c_str()) == 0) {
      python = candidate;
      break;
    }
  if (python.empty()) {
    std::fprintf(stderr,
                 "moe-compare: plots skipped: no python3 with matplotlib (Debian: apt-get install "
                 "python3-matplotlib); the figures are in %s\n",
                 json.c_str());
    return;
  }
  // The script reports on stderr, beside the progress lines: stdout keeps the table alone.
  const std::string cmd = shell_quoted(python) + " " + shell_quoted(script) + " " + shell_quoted(json.string()) + " " +
                          shell_quoted(dir.string()) + " --router " + shell_quoted(o.plot_router) + " 1>&2";
  std::fflush(stdout);
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "moe-compare: the plotting script failed: %s\n", cmd.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-compare: %s\n", e.what());
    usage(stderr, argv[0]);
    return 2;
  }
  try {
    const Index threads =
        o.threads > 0 ? o.threads : std::max<Index>(1, static_cast<Index>(std::thread::hardware_concurrency()));
    moe::ThreadPool pool(threads);
    if (o.throughput) return run_throughput(o, &pool);

    auto& t = o.train;
    const auto list = selected(o);
    if (o.plots && std::none_of(list.begin(), list.end(), [&](const cmp::Policy& p) { return p.name == o.plot_router; }))
      throw std::invalid_argument("--plot-router: expected one of the compared routers, got '" + o.plot_router + "'");
    const cmp::Task task = o.task == "text" ? cmp::load_text(o.text, o.context)
                                            : cmp::make_synthetic(8, 16, 4096, 2048, o.seed);
    if (task.kind == cmp::TaskKind::text) {
      t.block.d = o.context * t.model.embed;
    } else {
      t.block.d = o.d_model_synthetic;
      t.block.experts = o.has("--experts") || o.quick ? t.block.experts : task.clusters;
    }
    std::vector<std::uint64_t> seeds;
    for (Index s = 0; s < o.seeds; ++s) seeds.push_back(o.seed + static_cast<std::uint64_t>(s));
    std::fprintf(stderr,
                 "moe-compare: %s\n  %zu routers x %zu seed(s); each %ld Adam steps of %ld inputs (lr %g, aux %g, z %g), "
                 "d %ld, %ld block(s) of %ld experts (ff %ld, top-%ld), %ld threads, kernels %s\n",
                 task.description.c_str(), list.size(), seeds.size(), long(t.steps), long(t.batch), t.block.lr,
                 t.block.aux, t.block.z, long(t.block.d), long(t.model.layers), long(t.block.experts),
                 long(t.block.d_ff), long(t.block.top_k), long(threads), moe::kernels::arch_name());
    if (t.block.weight_type != moe::WeightType::f32) {
      std::fprintf(stderr, "  held-out evaluations run the experts in %s (training stays float)\n",
                   moe::weight_type_name(t.block.weight_type));
      for (const auto& p : list)
        if (!p.make(t.block)->set_inference_weights(t.block.weight_type))
          std::fprintf(stderr, "  %s: float experts (its experts have no %s form)\n", p.name.c_str(),
                       moe::weight_type_name(t.block.weight_type));
    }
    const auto start = std::chrono::steady_clock::now();
    const cmp::Comparison c = cmp::run_comparison(
        task, list, t, seeds, &pool,
        [&](std::size_t done, std::size_t total, const std::string& name, std::uint64_t seed, const cmp::CurvePoint& p) {
          if (p.step == 0) return;
          std::fprintf(stderr, "[%zu/%zu] %-22s seed %llu  step %5ld/%ld  held-out loss %.4f  load CV %.3f\n", done,
                       total, name.c_str(), static_cast<unsigned long long>(seed), long(p.step), long(t.steps),
                       p.eval_loss, p.load_cv);
        });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const nlohmann::json j = cmp::to_json(c);
    if (o.want_json) {
      emit_json(j, o);
      if (!o.json_path) {
        if (o.plots) make_plots(j, o);
        return 0;
      }
    }
    std::printf("%s\n\n%s", task.description.c_str(), cmp::format_table(c).c_str());
    std::printf(
        "\nbits/char, loss: held-out, at the end; MFLOP/t: active expert FLOPs per token; exp/tok: experts a\n"
        "token ran through; t/s: tokens per second, training and inference (whole model, wall clock); vs\n"
        "frozen-random: held-out loss beyond twice the standard error of the difference, else within noise.\n"
        "CV: coefficient of variation of the per-expert load, mean over the training steps, and on the held-out\n"
        "set at the end; dropped: tokens no expert processed; stable: tokens whose top expert did not change\n"
        "between the last two evaluations; special: NMI between a token's class and its top expert; aux, z:\n"
        "losses at the end (docs/compare.md)\n"
        "%zu runs in %.0f s\n",
        list.size() * seeds.size(), seconds);
    if (o.plots) make_plots(j, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-compare: %s\n", e.what());
    return 1;
  }
  return 0;
}
