// Every string the viewer shows, in Chinese (the default) and English. The choice is remembered in this browser.

const STRINGS = {
  zh: {
    "app.title": "网证 · 互联网电子数据取证",
    "nav.cases": "案件",
    "nav.signout": "退出",
    "signin.title": "登录",
    "signin.name": "用户名",
    "signin.password": "密码",
    "signin.submit": "登录",
    "signin.failed": "登录失败：{detail}",
    "cases.title": "案件",
    "cases.search": "搜索案件（编号、标题、文号）",
    "cases.none": "没有案件。",
    "cases.none_match": "没有符合条件的案件。",
    "cases.id": "编号",
    "cases.case_title": "标题",
    "cases.state": "状态",
    "cases.role": "我的角色",
    "cases.created": "创建时间",
    "cases.new": "新建案件",
    "cases.new_title": "案件标题",
    "cases.new_description": "说明（可选）",
    "cases.new_reference": "文号（可选）",
    "cases.create": "创建",
    "cases.created_ok": "已创建案件 {id}",
    "case.title": "案件 {id}",
    "case.description": "说明",
    "case.reference": "文号",
    "case.state": "状态",
    "case.outcome": "结果",
    "case.legal_hold": "法律保全",
    "case.legal_hold_on": "已保全（存储中的对象不可删除）",
    "case.legal_hold_off": "未保全",
    "case.members": "成员",
    "case.member": "用户",
    "case.member_role": "角色",
    "case.added": "加入时间",
    "case.captures": "取证记录",
    "case.no_captures": "尚无取证。",
    "case.capture_id": "取证编号",
    "case.capture_state": "状态",
    "case.capture_urls": "网址",
    "case.capture_operator": "取证人",
    "case.capture_created": "发起时间",
    "case.back": "返回案件列表",
    "state.lead": "线索",
    "state.opened": "立案",
    "state.closed": "结案",
    "role.investigator": "调查员",
    "role.case_handler": "办案人员",
    "role.court": "法院",
    "role.admin": "管理员",
    "capture.queued": "排队中",
    "capture.starting": "启动中",
    "capture.recording": "录制中",
    "capture.finalizing": "收尾中",
    "capture.preserving": "固证中",
    "capture.complete": "完成",
    "capture.partial": "部分完成",
    "capture.failed": "失败",
    "capture.interrupted": "中断",
    "error.generic": "出错了：{detail}",
    "error.not_found": "找不到该页面或案件。",
    "loading": "加载中…",
    "utc": "UTC",
  },
  en: {
    "app.title": "Wangzheng · internet evidence",
    "nav.cases": "Cases",
    "nav.signout": "Sign out",
    "signin.title": "Sign in",
    "signin.name": "User name",
    "signin.password": "Password",
    "signin.submit": "Sign in",
    "signin.failed": "Sign-in failed: {detail}",
    "cases.title": "Cases",
    "cases.search": "Search cases (id, title, reference)",
    "cases.none": "No cases yet.",
    "cases.none_match": "No case matches.",
    "cases.id": "Id",
    "cases.case_title": "Title",
    "cases.state": "State",
    "cases.role": "My role",
    "cases.created": "Created",
    "cases.new": "New case",
    "cases.new_title": "Case title",
    "cases.new_description": "Description (optional)",
    "cases.new_reference": "Reference (optional)",
    "cases.create": "Create",
    "cases.created_ok": "Case {id} created",
    "case.title": "Case {id}",
    "case.description": "Description",
    "case.reference": "Reference",
    "case.state": "State",
    "case.outcome": "Outcome",
    "case.legal_hold": "Legal hold",
    "case.legal_hold_on": "On (stored objects cannot be deleted)",
    "case.legal_hold_off": "Off",
    "case.members": "Members",
    "case.member": "User",
    "case.member_role": "Role",
    "case.added": "Added",
    "case.captures": "Captures",
    "case.no_captures": "No captures yet.",
    "case.capture_id": "Capture id",
    "case.capture_state": "State",
    "case.capture_urls": "URLs",
    "case.capture_operator": "Operator",
    "case.capture_created": "Launched",
    "case.back": "Back to the cases",
    "state.lead": "Lead",
    "state.opened": "Opened",
    "state.closed": "Closed",
    "role.investigator": "Investigator",
    "role.case_handler": "Case handler",
    "role.court": "Court",
    "role.admin": "Administrator",
    "capture.queued": "Queued",
    "capture.starting": "Starting",
    "capture.recording": "Recording",
    "capture.finalizing": "Finalizing",
    "capture.preserving": "Preserving",
    "capture.complete": "Complete",
    "capture.partial": "Partial",
    "capture.failed": "Failed",
    "capture.interrupted": "Interrupted",
    "error.generic": "Something went wrong: {detail}",
    "error.not_found": "No such page or case.",
    "loading": "Loading…",
    "utc": "UTC",
  },
};

const KEY = "wz-lang";

export function language() {
  const chosen = localStorage.getItem(KEY);
  return chosen === "en" || chosen === "zh" ? chosen : "zh";
}

export function setLanguage(lang) {
  localStorage.setItem(KEY, lang === "en" ? "en" : "zh");
  document.documentElement.lang = language() === "zh" ? "zh-CN" : "en";
}

export function t(key, values = {}) {
  const text = STRINGS[language()][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in values ? String(values[name]) : `{${name}}`));
}

// A time in the viewer's own zone, with UTC beside it (evidence times are compared across places).
export function formatTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return String(iso);
  const locale = language() === "zh" ? "zh-CN" : "en-GB";
  const local = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "medium" }).format(when);
  const utc = when.toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
  return `${local} (${utc} ${t("utc")})`;
}

export const LANGUAGES = Object.keys(STRINGS);
export const STRING_KEYS = Object.keys(STRINGS.zh);
