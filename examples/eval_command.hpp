// `blockdiff eval` (one decoder on a task's held-out split) and `blockdiff study` (the ablation
// study: AR against block-diffusion decoding over thresholds, caches, sub-blocks, policies,
// inference block sizes and the commit forward; a table, a CSV and an SVG plot of accuracy
// against tokens/s; then multiple choice by log-likelihood, each model scored both ways).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include "blockdiff/blockdiff.hpp"
#include "blockdiff/eval/eval.hpp"
#include "blockdiff/tokenizer/char_vocab.hpp"
#include "blockdiff/train/tasks.hpp"
#include "device_model.hpp"
#include "generate_command.hpp"

namespace blockdiff::cli {

//! A task model's character vocabulary (its folder's tokenizer.json), checked against its config.
inline tokenizer::CharVocab task_vocab(const std::string& dir, const io::ModelConfig& config) {
  const auto tok = std::filesystem::path(dir) / "tokenizer.json";
  require(std::filesystem::exists(tok), dir, ": no tokenizer.json (task evaluation needs the model's vocabulary)");
  auto vocab = tokenizer::CharVocab::load(tok);
  require(config.vocab_size == vocab.size(), dir, ": config.json has vocab_size ", config.vocab_size,
          " but tokenizer.json ", vocab.size(), " tokens");
  return vocab;
}

//! A task model on the device --device names, with its character vocabulary: the decoders that
//! `eval` and `study` run, as eval::BatchDecoder.
struct TaskModel {
  DeviceModel model;
  tokenizer::CharVocab vocab;

  TaskModel(const std::string& dir, DType weights, const DeviceFlag& device)
      : model(dir, weights, device), vocab(task_vocab(dir, model.config())) {}

  //! Greedy AR decoding of at most `max_new` tokens.
  eval::BatchDecoder ar(int max_new) {
    return [this, o = eval::ar_options(vocab, max_new)](Prompts prompts) { return eval::row_outputs(model.ar(prompts, o)); };
  }
  //! Block-diffusion decoding with `spec` (chosen at run time) of at most `max_new` tokens.
  eval::BatchDecoder diffusion(const DecoderSpec& spec, int max_new) {
    return [this, spec, o = eval::decode_options(vocab, max_new)](Prompts prompts) {
      return eval::row_outputs(model.generate(spec, prompts, o));
    };
  }

  //! `questions` answered by log-likelihood: first-token at `block` (Fast-dLLM v2's), or causal
  //! where `block` is empty (an AR model's), each after `shots` examples of its task laid out as
  //! the scoring's model was trained (padded with [MASK] to the block for first-token scoring,
  //! unpadded for causal); up to `batch` questions' rows a forward. One scoring call for all of
  //! them, so that the caches, and the task's examples they hold, carry over.
  eval::ChoiceReport choices(std::vector<train::tasks::ChoiceQuestion> questions, std::optional<int> block, int shots,
                             int batch, int caches) {
    train::tasks::add_shots(questions, shots, vocab, block.value_or(0));
    for (std::size_t q = 0; q < questions.size() && shots > 0; ++q) {
      const auto prefix = eval::question_prefix(questions[q], vocab);
      for (const auto& choice : questions[q].choices)
        if (const auto end = eval::scored_positions({prefix, vocab.encode(choice)}, block); end > model.config().context())
          fail("--shots ", shots, ": question ", q, " (", train::tasks::task_of(questions[q].prompt), ") after ", shots,
               " examples of ", questions[q].context.size(), " tokens in all is scored through position ", end,
               ", beyond ", model.config().describe_context(), ": ask fewer shots");
    }
    const int choices = questions.empty() ? 1 : static_cast<int>(questions.front().choices.size());
    const eval::ScoreOptions options{
        .mask_id = vocab.mask_id(), .eos_id = vocab.eos_id(), .batch = batch * choices, .caches = caches};
    return eval::evaluate_choices(questions, vocab, std::max<int>(1, static_cast<int>(questions.size())),
                                  [&](std::span<const eval::ScoreRequest> r) { return model.score(r, options, block); });
  }
};

//! A multiple-choice report as JSON (eval --choices, study's multiple-choice rows).
inline nlohmann::ordered_json choice_json(const eval::ChoiceReport& r) {
  return {{"n", r.n},
          {"accuracy", r.accuracy()},
          {"correct", r.correct},
          {"tied", r.tied},
          {"forwards", r.forwards},
          {"positions", r.positions},
          {"seconds", r.seconds}};
}

inline nlohmann::ordered_json report_json(const eval::Report& r) {
  return {{"n", r.n},
          {"accuracy", r.accuracy()},
          {"tokens_per_second", r.tokens_per_second()},
          {"tokens_per_forward", r.tokens_per_forward()},
          {"forwards_per_token", r.forwards_per_token()},
          {"new_tokens", r.new_tokens},
          {"denoising_forwards", r.denoising_forwards},
          {"total_forwards", r.total_forwards},
          {"seconds", r.seconds}};
}

class EvalCommand {
 public:
  explicit EvalCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("eval", "Accuracy and speed of a decoder on a task's held-out split");
    cmd_->add_option("--model", model_, "checkpoint folder with tokenizer.json")->required();
    weights_.add(cmd_);
    cmd_->add_option("--task", task_, "arith | sort | reverse | mix")->capture_default_str();
    cmd_->add_option("--n", n_, "held-out examples")->capture_default_str()->check(positive());
    cmd_->add_option("--batch", batch_, "prompts decoded together")->capture_default_str()->check(positive());
    cmd_->add_option("--max-new-tokens", max_new_, "new tokens at most")->capture_default_str()->check(positive());
    auto* max_new = cmd_->get_option("--max-new-tokens");
    auto* ar = cmd_->add_flag("--ar", ar_,
                              "AR decoding (the baseline) instead of block diffusion; with --choices, an AR model's "
                              "causal score");
    spec_.add_flags(cmd_);
    for (const char* flag : DecoderSpec::flags) ar->excludes(cmd_->get_option(flag));  // AR has no blocks or policy
    auto* choices = cmd_->add_option("--choices", choices_,
                                     "ask the prompts as multiple choice of N (2 to 10), as MMLU is asked: scored by "
                                     "Fast-dLLM v2's first-token log-likelihood at --block (--ar: causally)")
                        ->check(CLI::Range(2, 10));
    // Nothing is decoded: only the block of the scoring view is read.
    for (const char* flag : DecoderSpec::flags)
      if (std::string_view(flag) != "--block") choices->excludes(cmd_->get_option(flag));
    choices->excludes(max_new);
    cmd_->add_option("--shots", shots_,
                     "with --choices: examples of each question's own task asked before it (the first of its "
                     "training split, laid out as training packed them: padded with [MASK] to the block, or, with "
                     "--ar, not), as MMLU is asked 5-shot")
        ->capture_default_str()
        ->check(non_negative())
        ->needs(choices);
    cmd_->add_option("--caches", caches_, std::string("with --choices: ") + caches_help)
        ->capture_default_str()
        ->check(non_negative())
        ->needs(choices);
    device_.add(cmd_);
    cmd_->add_flag("--json", json_, "compact JSON output");
  }
  bool parsed() const { return cmd_->parsed(); }

  int run() {
    if (choices_) return run_choices();
    spec_.refuse_unread_flags();
    const auto examples = train::tasks::make(task_, train::tasks::Split::held_out, n_);
    TaskModel m(model_, weights_.dtype(), device_);
    spec_.default_shape(m.model.config());
    const auto report = eval::evaluate(examples, m.vocab, batch_, ar_ ? m.ar(max_new_) : m.diffusion(spec_, max_new_));
    auto out = report_json(report);
    out["device"] = device_.name;
    out["task"] = task_;
    out["decoder"] = ar_ ? "ar" : spec_.unmask;
    if (!ar_) {
      out["block"] = spec_.block;
      out["sub_block"] = spec_.sub_block;
      out["cache"] = spec_.cache;
      out.update(spec_.policy_parameters());
      out["commit"] = spec_.no_commit ? "reuse" : "forward";
    }
    std::cout << (json_ ? out.dump() : out.dump(2)) << "\n";
    return 0;
  }

  //! --choices: the held-out prompts asked as multiple choice, answered by log-likelihood.
  int run_choices() {
    const auto questions = train::tasks::make_choices(task_, train::tasks::Split::held_out, n_, *choices_);
    TaskModel m(model_, weights_.dtype(), device_);
    spec_.default_shape(m.model.config());
    const auto report = m.choices(questions, ar_ ? std::nullopt : std::optional<int>(spec_.block), shots_, batch_, caches_);
    auto out = choice_json(report);
    out["device"] = device_.name;
    out["task"] = task_;
    out["choices"] = *choices_;
    out["shots"] = shots_;
    out["scoring"] = ar_ ? "causal" : "first-token";
    if (!ar_) out["block"] = spec_.block;
    std::cout << (json_ ? out.dump() : out.dump(2)) << "\n";
    return 0;
  }

 private:
  CLI::App* cmd_ = nullptr;
  std::string model_, task_ = "mix";
  std::optional<int> choices_;
  int n_ = 200, batch_ = 1, max_new_ = 32, shots_ = 0, caches_ = eval::ScoreOptions{}.caches;
  bool ar_ = false, json_ = false;
  DecoderSpec spec_;
  WeightsFlag weights_;
  DeviceFlag device_;
};

class StudyCommand {
 public:
  explicit StudyCommand(CLI::App& app) {
    cmd_ = app.add_subcommand("study", "The ablation study: AR vs block-diffusion decoding over every axis");
    cmd_->add_option("--ar-model", ar_model_, "the AR base (the baseline)")->required();
    cmd_->add_option("--model", model_, "the block-diffusion model")->required();
    weights_.add(cmd_);
    cmd_->add_option("--task", task_, "arith | sort | reverse | mix")->capture_default_str();
    cmd_->add_option("--n", n_, "held-out examples per configuration")->capture_default_str()->check(positive());
    cmd_->add_option("--batch", batch_, "prompts decoded together")->capture_default_str()->check(positive());
    cmd_->add_option("--block", block_, "the block size the model was trained with (default: config.json's bd_size)");
    cmd_->add_option("--sub-block", sub_block_, "the sub-block size of every group but Table 3's (default: min(8, block / 2))");
    cmd_->add_option("--repeats", repeats_, "runs of each configuration; tokens/s is the best (the first warms up)")
        ->capture_default_str()
        ->check(positive());
    cmd_->add_option("--out", out_, "folder for study.csv and study.svg")->capture_default_str();
    cmd_->add_flag("--no-plot", no_plot_, "skip the SVG plot (needs gnuplot)");
    cmd_->add_option("--caches", caches_, std::string("multiple choice: ") + caches_help)
        ->capture_default_str()
        ->check(non_negative());
    device_.add(cmd_);
  }
  bool parsed() const { return cmd_->parsed(); }

  struct Row {
    std::string group, model, decoder;
    DecoderSpec spec;
    bool ar = false;
    eval::Report report;
  };

  int run() {
    TaskModel base(ar_model_, weights_.dtype(), device_);
    TaskModel diff(model_, weights_.dtype(), device_);
    DecoderSpec::default_shape(*cmd_, diff.model.config(), block_, sub_block_);
    const auto examples = train::tasks::make(task_, train::tasks::Split::held_out, n_);
    std::vector<Row> rows;
    auto add = [&](std::string group, DecoderSpec s, std::string decoder) {
      rows.push_back({std::move(group), "fdllm2", std::move(decoder), s, false, {}});
    };
    DecoderSpec d;
    d.block = block_;
    d.sub_block = sub_block_;
    d.cache = "hierarchical";
    rows.push_back({"baseline", "ar-base", "ar", d, true, {}});
    rows.push_back({"baseline", "fdllm2", "ar", d, true, {}});
    for (std::string c : {"none", "block", "hierarchical"})
      for (float t : {0.5f, 0.7f, 0.8f, 0.9f, 0.95f, 1.0f}) {
        auto s = d;
        s.cache = c;
        s.threshold = t;
        add("threshold x cache", s, "threshold");
      }
    for (int sb = 1; sb <= block_; sb *= 2)
      for (float t : {0.9f, 1.0f}) {
        auto s = d;
        s.sub_block = sb;
        s.threshold = t;
        add("sub-block (Table 3)", s, "threshold");
      }
    for (int b : {2, 4, 8, 16, 32})
      for (float t : {0.9f, 1.0f}) {
        auto s = d;
        s.block = b;
        s.sub_block = std::min(b, sub_block_);
        s.threshold = t;
        add("block mismatch (Table 4)", s, "threshold");
      }
    for (auto [policy, knob] : std::vector<std::pair<std::string, float>>{
             {"topk", 2}, {"margin", 0.5f}, {"entropy", 0.3f}, {"entropy-bounded", 0.5f}, {"factor", 1.0f}, {"random", 2}}) {
      auto s = d;
      s.unmask = policy;
      s.threshold = knob;
      s.k = int(knob);
      add("policy", s, policy);
    }
    // The commit forward (§3.3): re-encoding a finished block for clean K/V and the next block's
    // first token, against keeping the last denoising forward's K/V and last row (Commit::reuse).
    for (std::string c : {"block", "hierarchical"})
      for (float t : {0.9f, 1.0f})
        for (bool reuse : {false, true}) {
          auto s = d;
          s.cache = c;
          s.threshold = t;
          s.no_commit = reuse;
          add("commit forward", s, "threshold");
        }

    // Every configuration is checked before any is decoded: the study's own shape (--block,
    // --sub-block) must decode on the device, and any other configuration that does not (it lies
    // outside the device's compiled set) is skipped, said so on stderr and under the table.
    if (auto why = diff.model.why_not_compiled(d)) fail("study: ", *why);
    std::vector<Row> skipped;
    std::erase_if(rows, [&](const Row& r) {
      const auto why = r.ar ? std::nullopt : diff.model.why_not_compiled(r.spec);
      if (why) {
        std::fprintf(stderr, "study: skipping %s %s: %s\n", r.group.c_str(), label(r).c_str(),
                     why->substr(0, why->find('\n')).c_str());
        skipped.push_back(r);
      }
      return why.has_value();
    });

    // The results' folder is made now, so that an --out that cannot be one fails before the
    // minutes of decoding rather than after them.
    std::error_code made;
    std::filesystem::create_directories(out_, made);
    require(!made && std::filesystem::is_directory(out_), "study: --out ", out_, " cannot be made a folder (",
            made ? made.message() : std::string("a file is there"), ")");

    // Progress: one line rewritten in place on a terminal, a line per configuration in a log.
    const bool terminal = isatty(fileno(stderr)) != 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      auto& r = rows[i];
      auto& m = r.model == "ar-base" ? base : diff;
      std::fprintf(stderr, "%s[%zu/%zu] %-26s %-16s%s", terminal ? "\r" : "", i + 1, rows.size(), r.group.c_str(),
                   label(r).c_str(), terminal ? " ..." : "\n");
      for (int rep = 0; rep < repeats_; ++rep) {
        auto report = eval::evaluate(examples, m.vocab, batch_, r.ar ? m.ar(32) : m.diffusion(r.spec, 32));
        // Decoding is deterministic (greedy, fixed seeds): only the time may differ between runs.
        require(rep == 0 || (report.correct == r.report.correct && report.new_tokens == r.report.new_tokens &&
                             report.total_forwards == r.report.total_forwards),
                "study: ", label(r), " decoded differently on a repeat");
        if (rep == 0 || report.seconds < r.report.seconds) r.report = report;
      }
    }
    if (terminal) std::fprintf(stderr, "\r%-80s\r", "");
    const double ar_tps = rows[0].report.tokens_per_second();
    print_table(rows, skipped, ar_tps);

    // The paper's MMLU protocol on the same prompts: each model scored its own way and the other,
    // zero-shot and after three examples of the question's task.
    const auto questions = train::tasks::make_choices(task_, train::tasks::Split::held_out, n_, 4);
    std::vector<ChoiceRow> choice_rows;
    for (auto* m : {&base, &diff})
      for (bool causal : {true, false})
        for (int shots : {0, 3})
          choice_rows.push_back({m == &base ? "ar-base" : "fdllm2", causal ? "causal" : "first-token", shots,
                                 m->choices(questions, causal ? std::nullopt : std::optional<int>(block_), shots, batch_,
                                            caches_)});
    print_choices(choice_rows);

    write_csv(rows, ar_tps, std::filesystem::path(out_) / "study.csv");
    write_choices_csv(choice_rows, std::filesystem::path(out_) / "choices.csv");
    if (!no_plot_) plot(std::filesystem::path(out_));
    return 0;
  }

 private:
  struct ChoiceRow {
    std::string model, scoring;
    int shots = 0;
    eval::ChoiceReport report;
  };

  void print_choices(const std::vector<ChoiceRow>& rows) const {
    std::printf("\nmultiple choice of 4 (the paper's MMLU protocol: the choice of highest log-likelihood), "
                "first-token at block %d\n\n%-8s %-12s %5s %8s %5s %8s %9s\n",
                block_, "model", "scoring", "shots", "accuracy", "tied", "forwards", "positions");
    for (const auto& r : rows)
      std::printf("%-8s %-12s %5d %7.1f%% %5d %8d %9lld\n", r.model.c_str(), r.scoring.c_str(), r.shots,
                  100 * r.report.accuracy(), r.report.tied, r.report.forwards, static_cast<long long>(r.report.positions));
    std::fflush(stdout);
  }

  void write_choices_csv(const std::vector<ChoiceRow>& rows, const std::filesystem::path& path) const {
    io::replace_file(path, [&](std::ofstream& f) {
      f << "model,scoring,block,shots,n,accuracy,correct,tied,forwards,positions,seconds,device\n";
      for (const auto& r : rows)
        f << r.model << "," << r.scoring << "," << (r.scoring == "causal" ? 0 : block_) << "," << r.shots << ","
          << r.report.n << "," << r.report.accuracy() << "," << r.report.correct << "," << r.report.tied << ","
          << r.report.forwards << "," << r.report.positions << "," << r.report.seconds << "," << device_.name << "\n";
    });
    std::printf("wrote %s\n", path.string().c_str());
  }

  static std::string knob_text(const Row& r) {
    char buf[32];
    if (r.ar) return "-";
    if (r.decoder == "topk" || r.decoder == "random") std::snprintf(buf, sizeof buf, "k=%d", r.spec.k);
    else std::snprintf(buf, sizeof buf, "%.2f", r.spec.threshold);
    return buf;
  }
  static std::string commit_text(const Row& r) { return r.ar ? "-" : r.spec.no_commit ? "reuse" : "forward"; }
  static std::string label(const Row& r) {
    if (r.ar) return "ar (" + r.model + ")";
    return r.decoder + " " + knob_text(r) + " " + std::to_string(r.spec.block) + "/" + std::to_string(r.spec.sub_block) +
           " " + r.spec.cache + (r.spec.no_commit ? " no-commit" : "");
  }

  void print_table(const std::vector<Row>& rows, const std::vector<Row>& skipped, double ar_tps) const {
    const char* threads = std::getenv("OMP_NUM_THREADS");
    std::printf("task %s, %d held-out examples, batch %d, block %d (trained), %s%s\n\n", task_.c_str(), n_, batch_,
                block_, device_.cuda() ? "device cuda" : "OMP threads ", device_.cuda() ? "" : threads ? threads : "default");
    std::printf("%-25s %-8s %-16s %-6s %5s %4s %-12s %-7s %8s %9s %7s %7s %8s\n", "group", "model", "decoder", "knob",
                "block", "sub", "cache", "commit", "accuracy", "tokens/s", "tok/fwd", "fwd/tok", "vs AR");
    std::string last;
    for (auto& r : rows) {
      if (r.group != last && !last.empty()) std::printf("\n");
      last = r.group;
      std::printf("%-25s %-8s %-16s %-6s %5s %4s %-12s %-7s %7.1f%% %9.0f %7.2f %7.2f %7.2fx\n", r.group.c_str(),
                  r.model.c_str(), r.decoder.c_str(), knob_text(r).c_str(), r.ar ? "-" : std::to_string(r.spec.block).c_str(),
                  r.ar ? "-" : std::to_string(r.spec.sub_block).c_str(), r.ar ? "-" : r.spec.cache.c_str(),
                  commit_text(r).c_str(), 100 * r.report.accuracy(), r.report.tokens_per_second(), r.report.tokens_per_forward(),
                  r.report.forwards_per_token(), r.report.tokens_per_second() / ar_tps);
    }
    if (!skipped.empty()) {
      std::printf("\nnot compiled for --device %s, skipped (examples/compiled_set.hpp lists what is):\n",
                  device_.name.c_str());
      for (auto& r : skipped) std::printf("%-25s %s\n", r.group.c_str(), label(r).c_str());
    }
    std::fflush(stdout);
  }

  //! The table as CSV, written whole (a reader never finds half of it).
  void write_csv(const std::vector<Row>& rows, double ar_tps, const std::filesystem::path& path) const {
    io::replace_file(path, [&](std::ofstream& f) {
      f << "group,model,decoder,knob,block,sub_block,cache,n,accuracy,tokens_per_second,tokens_per_forward,"
           "forwards_per_token,new_tokens,denoising_forwards,total_forwards,seconds,speedup_vs_ar,commit,device\n";
      for (auto& r : rows)
        f << r.group << "," << r.model << "," << r.decoder << "," << knob_text(r) << "," << (r.ar ? 0 : r.spec.block)
          << "," << (r.ar ? 0 : r.spec.sub_block) << "," << (r.ar ? "-" : r.spec.cache) << "," << r.report.n << ","
          << r.report.accuracy() << "," << r.report.tokens_per_second() << "," << r.report.tokens_per_forward() << ","
          << r.report.forwards_per_token() << "," << r.report.new_tokens << "," << r.report.denoising_forwards << ","
          << r.report.total_forwards << "," << r.report.seconds << "," << r.report.tokens_per_second() / ar_tps << ","
          << commit_text(r) << "," << device_.name << "\n";
    });
    std::printf("\nwrote %s\n", path.string().c_str());
  }

  //! `text` in single quotes for gnuplot, which doubles a quote inside them.
  static std::string gnuplot_quoted(const std::string& text) {
    std::string out = "'";
    for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
  }
  //! `text` in single quotes for the shell, where a quote inside them is closed, escaped, reopened.
  static std::string shell_quoted(const std::string& text) {
    std::string out = "'";
    for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
  }

  //! accuracy vs tokens/s (the paper's Figure 4): one series per cache strategy over the
  //! thresholds, the AR baselines, and the other groups as points.
  void plot(const std::filesystem::path& dir) const {
    const auto script = dir / "study.gnuplot";
    std::ofstream g(script);
    g << "set terminal svg size 900,600 dynamic font 'sans,12'\n"
      << "set output " << gnuplot_quoted((dir / "study.svg").string()) << "\n"
      << "set datafile separator ','\n"
      << "set title 'Accuracy vs throughput (" << task_ << ", n = " << n_ << ", batch " << batch_ << ", "
      << device_.name << ")'\n"
      << "set xlabel 'tokens/s'\nset ylabel 'accuracy (%)'\nset key bottom right\nset grid\n"
      << "csv = " << gnuplot_quoted((dir / "study.csv").string()) << "\n"
      << "plot \\\n";
    for (std::string c : {"none", "block", "hierarchical"})
      g << "  csv using (strcol(1) eq 'threshold x cache' && strcol(7) eq '" << c
        << "' ? $10 : 1/0):($9*100) with linespoints title 'threshold 0.5..1, cache " << c << "', \\\n";
    g << "  csv using (strcol(1) eq 'policy' ? $10 : 1/0):($9*100):3 with labels point pt 6 offset 1,0.5 left "
         "font ',9' title 'policies (hierarchical)', \\\n"
      << "  csv using (strcol(1) eq 'commit forward' && strcol(18) eq 'reuse' ? $10 : 1/0):($9*100) with points pt 4 "
         "ps 1.5 title 'no commit forward (threshold 0.9, 1.0)', \\\n"
      << "  csv using (strcol(1) eq 'baseline' ? $10 : 1/0):($9*100) with points pt 7 ps 2 title 'AR decoding'\n";
    g.close();
    const std::string cmd = "gnuplot " + shell_quoted(script.string());  // its warnings go to stderr
    if (std::system(cmd.c_str()) == 0)
      std::printf("wrote %s\n", (dir / "study.svg").string().c_str());
    else
      std::printf("gnuplot failed or is missing; the plot script is %s\n", script.string().c_str());
  }

  CLI::App* cmd_ = nullptr;
  std::string ar_model_, model_, task_ = "mix", out_ = "study";
  int n_ = 200, batch_ = 1, repeats_ = 3, caches_ = eval::ScoreOptions{}.caches;
  int block_ = 0, sub_block_ = 0;  // where not given, from the model (DecoderSpec::default_shape)
  bool no_plot_ = false;
  WeightsFlag weights_;
  DeviceFlag device_;
};

}  // namespace blockdiff::cli
